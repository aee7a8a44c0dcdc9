"""Step 5 of the walkthrough: run Prompt flow flows (`flow.dag.yaml`, `flow.flex.yaml`, `.prompty`) and connections.

Where things live: `contract` (what a flow is), `loader` with `dag`, `flex` and `prompty` (reading
each kind of flow), `executor` (running one), `batch` and `runs` (a flow over a data file), `chat`
and `serve` (a chat session, a flow over HTTP), `compat` (the `promptflow` names tool code imports).
"""
