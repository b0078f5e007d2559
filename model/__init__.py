"""Pure-PyTorch models of the harness: OneTrans, the paper's baselines, attention dispatch and
parameter/FLOP accounting. Nothing here imports Lightning or the harness."""
