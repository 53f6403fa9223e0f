"""Building blocks shared by plugins' CPU kernels. Each module imports its own optional
dependency (numba ...), so importing :mod:`attnkit` never pulls them in."""
