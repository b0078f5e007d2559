"""Every sweep file in sweeps/ loads, expands (default and each preset) and keeps its run ids.

The golden ids pin the run identity: a change to a sweep file or to a *semantic* default of the run
config changes them (that is the point of content-hash ids: old results no longer match). If the
change is deliberate, regenerate with `python tests/test_sweep_files.py` and paste the output.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.sweepfile import expand, load_sweep, resolve

SWEEPS = Path(__file__).resolve().parents[1] / "sweeps"


def presets_of(path: Path) -> list[str | None]:
    """None (the paper-scale default) and every preset the file declares, sorted."""
    return [None, *sorted(load_sweep(path).presets)]


GOLDEN = {
    ("ablations.yaml", None): [
        "2d896724ca3b",
        "968c4e524825",
        "c0d54543d486",
        "7821e7bc5d78",
        "d2bc0e0221e1",
        "9259a2605a20",
        "1055aaa4e373",
    ],
    ("ablations.yaml", "ci"): [
        "9978f664c50e",
        "59b818794fa4",
        "4356e5d3067d",
        "d6f9c2dc1bcb",
        "ff955e9323ff",
        "d3d62515da6b",
        "250fa69b1872",
    ],
    ("ablations.yaml", "laptop"): [
        "4c00f7840f7e",
        "863e3f74511a",
        "0dad37076290",
        "74ba0e7b203e",
        "d3f8daffec27",
        "59e8e2c90e2d",
        "839dfd13233f",
    ],
    ("baselines.yaml", None): [
        "3d7ae6a26322",
        "e41f4e80f0a4",
        "5ad3ba9cb993",
        "efcb8d2277a1",
        "4524e5c9e40b",
        "3b2eb185a3e7",
        "930878f402d7",
        "a195890caffe",
        "6481cf7497df",
    ],
    ("baselines.yaml", "ci"): [
        "f10e948a3073",
        "1eaaf5f272d5",
        "b2e30ffff9cc",
        "86613a4c7d63",
        "5743fc04a0f9",
        "91dee80cf607",
        "2f1349d199e8",
        "632ef8678d65",
        "6ef61da4f824",
    ],
    ("baselines.yaml", "ci-matched"): [
        "acc918af16e0",
        "a48ee6bdf939",
        "20167602121d",
        "8f8b41909b75",
        "819cd3e965e4",
        "8c9a9d07b77f",
        "654a2b8761c4",
        "63a6cfcc14dc",
        "13eeb2ab37a7",
    ],
    ("baselines.yaml", "compare"): [
        "1422b8fa815f",
        "319f19a8183c",
        "4a4a635b52f8",
        "f5eb776db731",
        "682a3c3c37f1",
        "aec36b331056",
        "37fba553e650",
        "611a52adf2d9",
        "08a4f2a0370a",
        "9803853f38e4",
        "8300a3555331",
        "2641cfadd022",
        "d3f135519f28",
        "8358ac566332",
        "fab8e26f57df",
        "e3a5afb96411",
        "8f27638129ab",
        "ac2badac3eb5",
        "23f976f90c03",
        "935912f7165c",
        "e2a9aa830647",
        "3dda23975774",
        "24e4b6a9a592",
        "de344c9688d2",
        "8c5e1c0df835",
        "2c101cbee0b1",
        "2dde07ed3a7c",
    ],
    ("baselines.yaml", "compare-matched"): [
        "701554f4e8d5",
        "254ed9e7b774",
        "7cd017223068",
        "27c7f8446f1c",
        "78e0e4369171",
        "87bc559ee888",
        "b48c85af350b",
        "15c796bf11fc",
        "93fac8019a4f",
        "8a9d3889c2e0",
        "87202cf71d74",
        "1305afd01b68",
        "8e613c2e6661",
        "7823c7f6d5fc",
        "dfc8dc3bdff9",
        "791c09dec8a7",
        "a33a6a5bb219",
        "2462c5df28a8",
        "075f46ef54c8",
        "937c6a021e37",
        "b9b5fcfdb9de",
        "de00340227e8",
        "53ddbf960b63",
        "b7c614b5bddc",
        "c7508d5ce0dc",
        "919ed2abffdc",
        "f0dd25d42fea",
    ],
    ("baselines.yaml", "laptop"): [
        "d1a2a8f63cdd",
        "474eddbbec2e",
        "ac307cb5450e",
        "d3871be535ba",
        "76c9fc618a68",
        "109d0250a8c2",
        "be636ec5402c",
        "35e678178b11",
        "100fbb63f36e",
    ],
    ("baselines.yaml", "matched"): [
        "1457d4c31b1a",
        "b48b7f8c4f59",
        "b6253b6907d2",
        "e97b4e8c2b20",
        "fa3a799eaa02",
        "b8c4e5278ff2",
        "1c5d3762c2ef",
        "c0c860a94973",
        "5343ad035bc8",
    ],
    ("baselines.yaml", "paper-faithful"): [
        "3d7ae6a26322",
        "e41f4e80f0a4",
        "5ad3ba9cb993",
        "efcb8d2277a1",
        "4524e5c9e40b",
        "3b2eb185a3e7",
        "930878f402d7",
        "b611f62564dc",
        "72b561962cda",
    ],
    ("depth.yaml", None): [
        "de38882bee9b",
        "4f2db7448e3a",
        "e886fac23982",
        "a273f228d2f6",
        "901a41833c61",
    ],
    ("depth.yaml", "ci"): [
        "be094d2be757",
        "b81c406e1dae",
        "4c3c2f3cc852",
        "a91249b7e7aa",
        "54686e7c99e2",
    ],
    ("depth.yaml", "laptop"): [
        "13f0373c443e",
        "6d2141106ff1",
        "bd12d0c835de",
        "03dbc2debb09",
        "405fb0384506",
        "d536e89974cc",
        "c4ec3fa4f3bb",
        "e0460dc072f1",
        "3b8c4adbe183",
        "b475a478bbd5",
    ],
    ("depth.yaml", "laptop-tuned"): [
        "f8535ece1faa",
        "0c434fd00f80",
        "13f0373c443e",
        "6d2141106ff1",
        "70cece9f6120",
        "0571a23d1226",
        "3045266c7183",
        "a43e7960b07f",
        "bd12d0c835de",
        "03dbc2debb09",
        "77ee5ced29d4",
        "c2ca5d2f17cc",
        "8da79b50cb08",
        "e18ff091a61e",
        "405fb0384506",
        "d536e89974cc",
        "bb92cb9e5269",
        "5a50186275ad",
        "ae25dcff35ac",
        "d6228569dba6",
        "c4ec3fa4f3bb",
        "e0460dc072f1",
        "c6ea6f6d3761",
        "a0cf22bb4fd2",
        "ce6d7e42f20a",
        "c702bec9f289",
        "3b8c4adbe183",
        "b475a478bbd5",
        "9dafddf26b70",
        "5bd1ff8b1d0a",
    ],
    ("depth.yaml", "paper-faithful"): [
        "1879ae5bf5b1",
        "ff9535d09f9b",
        "1b473bd3b91a",
        "387b54cad33d",
        "040a08fc4bf8",
    ],
    ("efficiency.yaml", None): ["1d1b6d19d502", "5fc8b4357c22", "7cad4da43ebf", "3b4251811865"],
    ("efficiency.yaml", "ci"): ["367962e60c34", "87d6dd16f59c", "8af8bdad7413", "aa36e1c16d80"],
    ("efficiency.yaml", "laptop"): ["dcbb9538e7f0", "3ecc2c7387e6", "7680f178139f", "68119f919485"],
    ("figure3b.yaml", None): [
        "f1f4b77d90a9",
        "8a2d9c4863b8",
        "185b6cad87b1",
        "89f6a8069479",
        "13042ee06752",
        "7818299fcebf",
        "3bb7cbf5cda2",
        "cc8f7c91ed68",
    ],
    ("figure3b.yaml", "ci"): [
        "2d6a7087e657",
        "99adf1f0293a",
        "363263c45973",
        "9a822e2222ea",
        "743dadea0349",
        "b5495c50c7a6",
        "9ce0cfd6f173",
        "57e4eefbff31",
    ],
    ("figure3b.yaml", "laptop"): [
        "89f78ba5bdb1",
        "d35a826ef5d6",
        "6016d3321d55",
        "77e542a2ff2a",
        "e5892dee4942",
        "342370c2b7c3",
        "8213d3815300",
        "35e0745f1e9b",
        "37683d842b95",
        "934761ca36f8",
        "7d24e9fd80c5",
        "acb4657dd539",
        "d659a1547bc3",
        "c5ac91c806e1",
        "9b98ce239b59",
        "bb7f3069d8e4",
    ],
    ("figure3b.yaml", "paper-faithful"): [
        "e3bf3d99e53c",
        "9007a8174bc2",
        "73d84274108f",
        "4433b52fef46",
        "13042ee06752",
        "7818299fcebf",
        "3bb7cbf5cda2",
        "cc8f7c91ed68",
    ],
    ("length.yaml", None): [
        "6f22f6b4be51",
        "f50b4de42453",
        "fd2c93b2deef",
        "08bb10c2539d",
        "d9c6164c3926",
    ],
    ("length.yaml", "ci"): [
        "b6e723b032f4",
        "89a7e308579f",
        "632ef8678d65",
        "b0c0027ca5da",
        "0775cb33eb8f",
    ],
    ("length.yaml", "laptop"): [
        "facd80849297",
        "e416e64a92b0",
        "bc6b4699be8d",
        "40c510941114",
        "55a9a7bf8435",
        "fa84a2ab08b6",
        "3dda23975774",
        "24e4b6a9a592",
        "e7d39fd2b845",
        "d5fe48783625",
    ],
    ("length.yaml", "paper-faithful"): [
        "544ecd235a8b",
        "8977c4d84611",
        "3ec3ffc0938a",
        "a6703837df2d",
        "626087e798d5",
    ],
    ("length.yaml", "taobao"): [
        # recency_bias since 2026-12-07 (section 22), lr 2e-3 with match_tie since 2026-12-08
        # (docs/learning-history.md section 23)
        "e3b353873e5c",
        "c45dc842ce31",
        "9bbd971cb8b7",
        "bec0239b97ec",
        "becbd22dc1d5",
        "3c3b8499f246",
        "9136c95a6519",
        "c14372369ce0",
        "0c0663b79763",
        "d17083979d31",
    ],
    ("length.yaml", "tmall"): [
        # lr 2e-3 with match_tie since 2026-12-08 (docs/learning-history.md section 23)
        "27b33b255218",
        "999b087e7f81",
        "e4712ff8bb5a",
        "016866568e89",
        "1d5ef33a0d4b",
        "60afe2c4543f",
        "05aa25a92b1f",
        "dc4cead31a0e",
        "ab373b749a70",
        "d59612e4430a",
    ],
    ("length_tuned.yaml", None): [
        "0e08a9ed64d3",
        "272c9f7f8441",
        "c682cb4a58fc",
        "5f4751b7c42a",
        "f9ced15719e4",
        "7c6161559052",
        "8736f3b52783",
        "44a596acf8b0",
        "9659f1e6f427",
        "6653ce116ec4",
        "56c36c5c7a99",
        "2b0c23ef17cc",
        "7815e348547a",
        "0fe886dced31",
        "f26edcf63a37",
    ],
    ("length_tuned.yaml", "ci"): [
        "76d60c4d963a",
        "b6e723b032f4",
        "968f7b48c4db",
        "292354a80a4d",
        "89a7e308579f",
        "8162bd7e8a5a",
        "05e5f6b5a006",
        "632ef8678d65",
        "2c206c57e030",
        "fb185fa7d033",
        "b0c0027ca5da",
        "18347fa474e1",
        "c3290a005e47",
        "0775cb33eb8f",
        "de4f6ac817b1",
    ],
    ("length_tuned.yaml", "laptop"): [
        "6422fbdd404f",
        "616fb39a70f1",
        "facd80849297",
        "e416e64a92b0",
        "0a483d197544",
        "6993412de51d",
        "3bbd7a2eb94e",
        "71298fc14c1b",
        "bc6b4699be8d",
        "40c510941114",
        "b5b4a0785b9d",
        "b95ddbeffd15",
        "93637462bb17",
        "521e3b9973f2",
        "55a9a7bf8435",
        "fa84a2ab08b6",
        "2d124cfb5d85",
        "7183c066b5cf",
        "0d6d749d04c1",
        "537498dc766d",
        "3dda23975774",
        "24e4b6a9a592",
        "28597d7f246b",
        "1c7c7f0bc28a",
        "4acb8e2520a8",
        "ff59c782e3ab",
        "e7d39fd2b845",
        "d5fe48783625",
        "9bd8b1feb160",
        "b0d5ceb01e54",
    ],
    ("length_tuned.yaml", "paper-faithful"): [
        "57f6f51fa8ec",
        "6a75c0b090da",
        "4dc1cedfa9e2",
        "a884dd566be9",
        "7430860e57f4",
        "c8ca7f584a3a",
        "906a752faf45",
        "6eecc73f6fca",
        "cfca8293658e",
        "8f51d841f3c2",
        "088fad17fa70",
        "3337e78146ad",
        "f7e56fe574e2",
        "e15fd290eca5",
        "c793d5f7dc3c",
    ],
    ("smoke.yaml", None): ["632ef8678d65", "4c4d5628bfc9", "f10e948a3073", "e1de2f00b2a8"],
    ("smoke.yaml", "ci"): ["b145ed3cf44a", "a25646fcb60b", "41982886b6ea", "b5335a954f49"],
    ("smoke.yaml", "laptop"): ["32996542bf27", "53dd3347e34d", "dea7261ae4a5", "7392fb11b73e"],
    ("tricks.yaml", None): [
        "395d60d032fe",
        "2d6faa85e1bf",
        "4df689b2e674",
        "df6f85a59091",
        "e10782f6187c",
        "0a4f94b72331",
        "d56df99e15a5",
        "177892e87e2a",
        "93377a012969",
        "ca5cb47f8340",
        "b98f45510215",
        "1a09cf1d0699",
        "b58b9f0a9f39",
        "01091c4bece4",
        "aad81728b5ac",
        "89df15084fbd",
        "68b4dea64eb5",
        "68d7d5040446",
        "1e1233a546c4",
        "3e6d1914c8d1",
        "a735b18d743f",
        "bc7133687fac",
        "6e8cb94ff3b0",
        "bfafc3595eab",
        "a5ffca311dd7",
        "1d5fb58119ac",
        "c9b9a1533c21",
        "79929ee24f29",
        "77d5a7b2259e",
        "1be782d245ca",
    ],
    ("tricks.yaml", "ci"): [
        "bfe9e39e5833",
        "aec720c19164",
        "60f3168671c4",
        "f8169a10c3a8",
        "b95c1f75c6a3",
        "066e2f5354d6",
        "810d4b6ab557",
        "1d7a9269e423",
        "a61be99731de",
        "5489f193d95b",
        "c2619b028bd1",
        "9a608bfabf31",
        "d6130531e6a9",
        "0221dc9b5e3b",
        "2c10ed750537",
        "5aa1be3cfc2c",
        "558ed821d045",
        "ed929bef874a",
        "50c88f55ecf8",
        "3b24ddea91db",
        "6926541d9762",
        "a1d1abf221c4",
        "7c079a30a3e1",
        "7414034227a7",
        "4335adccc21f",
        "1db008b856db",
        "dd9882816e44",
        "757904d64c91",
        "e53e06540dc3",
        "c84c4850f49b",
    ],
    ("tricks.yaml", "laptop"): [
        "e52b38f730cb",
        "2d42c04bf992",
        "116390699da8",
        "c6adb08b26a5",
        "9f425ba95b61",
        "89e758b6d0a3",
        "b97e8888a267",
        "6def7621ed4e",
        "02cda3a1f31c",
        "95a8b9bc84bb",
        "3a8839621170",
        "c9d36ceaf69b",
        "ad08d6d60629",
        "fd0dad01e9db",
        "b7cc988977c3",
        "f472f4c909d3",
        "87ce5dbff244",
        "d1e57de2f731",
        "d1851fa776f5",
        "583e33895a5c",
        "9ce3e43ffb61",
        "3aea08498701",
        "b8ef02ff85cb",
        "6c8fa5a8a7aa",
        "71d23fd26975",
        "3df9c4769bba",
        "14c00d396df8",
        "241b3125a12c",
        "50d254d2daca",
        "7db99ab4a3db",
    ],
    ("width.yaml", None): [
        "8a2d9c4863b8",
        "185b6cad87b1",
        "89f6a8069479",
        "b9b04f7f8ca5",
        "fc1389281968",
    ],
    ("width.yaml", "ci"): [
        "1010abd78f2c",
        "2d6a7087e657",
        "a746e66468c6",
        "99adf1f0293a",
        "a2fa671ffc61",
    ],
    ("width.yaml", "laptop"): [
        "738a3eb9ef7b",
        "a01f460df09a",
        "d59b1ad42207",
        "e546b2bf535d",
        "8aa00c122a34",
        "419e69a943d9",
        "6aff77a6d290",
        "35c176b91f88",
        "4e15e402a652",
        "f8f8091b5cd8",
    ],
    ("width.yaml", "laptop-tuned"): [
        "f7c9af97d1a2",
        "99728c16d8b7",
        "738a3eb9ef7b",
        "a01f460df09a",
        "d1803fca4ca2",
        "91aa78c39e4f",
        "6434619ae6b9",
        "c9aef8b781c6",
        "d59b1ad42207",
        "e546b2bf535d",
        "57c9e2e90885",
        "a206202a1fe3",
        "d580674821ee",
        "745f68b23dd7",
        "8aa00c122a34",
        "419e69a943d9",
        "0ce7e4cb972d",
        "6c1f1eb12ac0",
        "f5df0e86f6b1",
        "57b76417e2cf",
        "6aff77a6d290",
        "35c176b91f88",
        "a6e625c62554",
        "d991e00c59c4",
        "523637bf2c6f",
        "8c5b3c66e68d",
        "4e15e402a652",
        "f8f8091b5cd8",
        "a413a0a76f17",
        "8765115fac43",
    ],
    ("width.yaml", "paper-faithful"): [
        "9007a8174bc2",
        "73d84274108f",
        "4433b52fef46",
        "6219d31d824b",
        "06693730890d",
    ],
}


def test_every_sweep_file_has_golden_values():
    files = sorted(p.name for p in SWEEPS.glob("*.yaml"))
    assert files, "sweeps/ holds no sweep file"
    assert sorted({f for f, _ in GOLDEN}) == files, (
        "a sweep file was added or removed: update GOLDEN"
    )
    for name in files:
        assert set(load_sweep(SWEEPS / name).presets) >= {"ci", "laptop"}, (
            f"{name} lacks the ci/laptop presets"
        )
        missing = {(name, p) for p in presets_of(SWEEPS / name)} - set(GOLDEN)
        assert not missing, f"presets without golden ids: {sorted(missing, key=str)}; update GOLDEN"


@pytest.mark.parametrize("fname,preset", sorted(GOLDEN, key=str))
def test_expansion_count_and_stable_ids(fname, preset):
    runs = resolve(load_sweep(SWEEPS / fname, preset), check_model=False)
    ids = [r.run_id for r in runs]
    assert len(ids) == len(set(ids))
    assert ids == GOLDEN[(fname, preset)], (
        f"{fname} preset={preset}: run ids changed; if deliberate, regenerate (python tests/test_sweep_files.py)"
    )
    # same input, same runs, same order
    assert [r.run_id for r in resolve(load_sweep(SWEEPS / fname, preset), check_model=False)] == ids


@pytest.mark.parametrize("fname", sorted({f for f, _ in GOLDEN}))
def test_presets_keep_the_grid_shape(fname):
    def points(runs):  # the grid's points, in order; a preset may run them with other seeds and
        # add a search (`tune`: each point once per candidate)
        def candidate(r):
            return r.tune["value"] if r.tune else None

        first = (runs[0].seed, candidate(runs[0]))
        return [(r.label, list(r.axes)) for r in runs if (r.seed, candidate(r)) == first]

    default = expand(load_sweep(SWEEPS / fname))
    for preset in presets_of(SWEEPS / fname)[1:]:
        sweep = load_sweep(SWEEPS / fname, preset)
        shrunk = expand(sweep)
        seeds = sorted({r.seed for r in shrunk})
        candidates = len(sweep.tune.values) if sweep.tune else 1
        assert points(shrunk) == points(default)
        assert len(shrunk) == len(points(default)) * len(seeds) * candidates


def test_length_sweep_is_log_spaced_768_to_2048():
    sweep = load_sweep(SWEEPS / "length.yaml")
    lengths = sweep.grid["data.seq_len"]
    assert lengths[0] == 768 and lengths[-1] == 2048 and len(lengths) >= 5
    import numpy as np

    ratios = np.diff(np.log(lengths))
    assert ratios.max() / ratios.min() < 1.25, f"not log-spaced: {lengths}"


@pytest.mark.parametrize("fname,preset", sorted(GOLDEN, key=str))
def test_presets_build_valid_models(fname, preset):
    """Every run (paper default and each preset) names a model size and overrides its model accepts."""
    runs = resolve(load_sweep(SWEEPS / fname, preset), check_model=True)
    assert runs


if __name__ == "__main__":
    for f in sorted(SWEEPS.glob("*.yaml")):
        for p in presets_of(f):
            print(
                f"    ({f.name!r}, {p!r}): {[r.run_id for r in resolve(load_sweep(f, p), check_model=False)]!r},"
            )


def test_zip_set_column_gives_rows_their_own_settings():
    """baselines.yaml compare: only the OneTrans rows run request-level (train.request_level, through
    the zip `set` column) and take the history recipe (match_init, qk_norm, through the zip
    `model.overrides` column); the baselines (which refuse both) get none, neither column is an
    analysis axis, and an empty dict adds nothing to a run name."""
    runs = resolve(load_sweep(SWEEPS / "baselines.yaml", "compare"), check_model=True)
    for r in runs:
        assert "model.overrides" not in r.plan.axes and "set" not in r.plan.axes
        assert r.cfg.train.cvr_loss == "clicked_per_impression" and r.cfg.train.max_steps == -1
        if r.cfg.model.name == "onetrans":
            assert r.cfg.model.overrides == {"match_init": True, "qk_norm": True}
            assert r.cfg.train.request_level and "request_level-on" in r.name
        else:
            assert r.cfg.model.overrides == {}
            assert not r.cfg.train.request_level
            assert r.name == f"{r.cfg.model.name}-tiny-s{r.plan.seed}"
    assert {r.plan.seed for r in runs} == {0, 1, 2} and {r.cfg.data.seq_len for r in runs} == {64}


def test_compare_onetrans_tiny_runs_are_the_laptop_length_sweeps_L64_runs():
    """The compare preset's onetrans-tiny rows are the laptop length sweep's seq_len-64 runs (same
    recipe, same ids), so a user who ran the main job can copy those runs in instead of retraining."""
    compare = resolve(load_sweep(SWEEPS / "baselines.yaml", "compare"), check_model=False)
    length = resolve(load_sweep(SWEEPS / "length.yaml", "laptop"), check_model=False)
    l64 = {r.run_id for r in length if r.cfg.data.seq_len == 64}
    tiny = {r.run_id for r in compare if r.cfg.model.size == "onetrans-tiny"}
    assert len(l64) == 2 and l64 <= tiny
