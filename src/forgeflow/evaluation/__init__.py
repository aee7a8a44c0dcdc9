"""Knowing a fine-tune is better before users see it: offline evaluation of a model against its baseline on held-out
rows (metrics, confidence intervals, an LLM judge through a Prompt-flow-style flow), run as a job; and online
evaluation of a deployment under rollout (live metrics and a judge on a canary's answers) that moves traffic in steps,
promoting or rolling back. Above `serving` and `flows`, which it drives; below `api`."""
