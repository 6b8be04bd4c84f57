"""Dataset building, the synthetic dataset and annotation export (the edges of the data flow)."""
