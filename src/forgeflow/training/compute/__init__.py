"""Compute: where fine-tuning jobs run. `targets` is the table of named targets and their limits, `base` the seam
the job runner talks to ("run this job"), `local` the worker-process implementation on this machine, `ray` Ray jobs
on a cluster."""
