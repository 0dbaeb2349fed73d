"""Ready-made transforms for published model families (application glue; packages hold no code)."""
