"""Sets: FID and KID's streamed statistics and reductions (NumPy only: the torch-free client imports them)."""
