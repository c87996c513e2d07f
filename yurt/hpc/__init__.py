"""Slurm and MPI glue: the host MPI bind model (:mod:`yurt.hpc.mpi`), ``yurt srun`` (:mod:`yurt.hpc.srun`)."""
