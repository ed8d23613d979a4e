"""Transfer studies: spec, runner, results store, statistics and reports."""
