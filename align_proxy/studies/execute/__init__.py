"""Running a study's cells: one scheduler (`scheduler`) over two executors, this machine's processes (`local`) and
Slurm jobs (`slurm`), and what every executor does with one cell (`cells`)."""
