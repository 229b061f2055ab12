"""The quality benchmark: grids of cells run directly on ecos_core, their feature spaces and reports."""
