"""Lightning callbacks: ``t_sweep`` (metrics, grids and tables over a sweep of the control value t)."""
