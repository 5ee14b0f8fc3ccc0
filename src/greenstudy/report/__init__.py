"""The `report` entry point: the variant runs compared (table, pictures, HTML) and the Model Registry decision.

May import: the top-level modules, measure, training, variants and runs. Never study or results."""
