"""The executor pod: its manifest (builder, template), its states and what its exits mean."""
