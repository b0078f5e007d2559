"""python -m harness.data.converters {movielens,taobao,tmall} RAW_DIR OUT_DIR [--neg-ratio N] ..."""

import argparse

from harness.data.converters import add_convert_args, main_convert

if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m harness.data.converters", description=__doc__)
    add_convert_args(parser)
    raise SystemExit(main_convert(parser.parse_args()))
