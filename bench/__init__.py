"""Everything that measures: the matrix, the runner, probes, the store and reports."""
