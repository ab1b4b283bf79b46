"""Integrations of MoE models with simulation tools (ASE, LAMMPS)."""
