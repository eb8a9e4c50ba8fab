"""The run, top to bottom: widths (ratio or budget), the solving policy, the sequential
driver, the report."""
