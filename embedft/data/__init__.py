"""Training data: NLI triplet preparation and the triplet DataModule."""
