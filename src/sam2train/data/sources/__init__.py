"""The storage formats: one reader per format behind a registry."""
