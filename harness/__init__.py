"""The OneTrans scaling-law harness: data, training runs, sweeps and dispatch."""
