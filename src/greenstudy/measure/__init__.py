"""What a run costs: the precision the hardware runs natively, the CodeCarbon energy meter and the phase ledger.

May import: the top-level modules (errors, interrupts, progress, config). Never training, variants, runs,
study, report or results."""
