"""How a model learns: CIFAR data, the two models, the training and evaluation steps, the stop rules,
checkpoints and the measured training loop.

May import: the top-level modules and measure. Never variants, runs, study, report or results."""
