"""The four variants of a model (baseline and amp, pruned, quantized) and the record each hands back.

May import: the top-level modules, measure and training. Never runs, study, report or results."""
