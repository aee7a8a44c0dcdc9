"""Several fine-tunes of one base model on one deployment (`adapters`: each registered version's name and its LoRA
adapter folder, as JSON; the deployment's model folder is then the base model's) and the GGUF type a llamacpp
deployment serves (`gguf_type`). Rows from before read as one model with the model server's GGUF default."""

import sqlalchemy as sa
from alembic import op

revision = "0010_deployment_adapters"
down_revision = "0009_endpoint_ports"


def upgrade() -> None:
    op.add_column("deployments", sa.Column("adapters", sa.Text(), nullable=True))
    op.add_column("deployments", sa.Column("gguf_type", sa.String(16), nullable=True))
