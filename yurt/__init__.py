"""yurt: a rootless, daemonless container runtime for HPC.

Kept deliberately empty of imports: ``yurt exec`` is on the hot path of every
MPI rank, so importing the package must cost nothing beyond this file.
"""

__version__ = "0.1.0"
