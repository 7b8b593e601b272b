"""Reports: measures and statistics, renderings, plots."""
