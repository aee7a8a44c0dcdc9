"""Step 5 of the walkthrough: run Prompt flow `flow.dag.yaml` flows and their connections."""

from forgeflow.flows.compat import (
    AzureOpenAIConnection,
    CustomConnection,
    OpenAIConnection,
    install_promptflow_shim,
    log_metric,
    tool,
)
from forgeflow.flows.connection_yaml import load_connection_yaml
from forgeflow.flows.dag import Flow, chat_history_name, chat_input_name, chat_output_name, load_flow
from forgeflow.flows.executor import has_aggregation, run_aggregation, run_flow, write_details
from forgeflow.flows.result import FlowResult, StreamingOutput

__all__ = [
    "AzureOpenAIConnection",
    "CustomConnection",
    "OpenAIConnection",
    "StreamingOutput",
    "has_aggregation",
    "run_aggregation",
    "Flow",
    "FlowResult",
    "chat_history_name",
    "chat_input_name",
    "chat_output_name",
    "install_promptflow_shim",
    "load_connection_yaml",
    "load_flow",
    "log_metric",
    "run_flow",
    "tool",
    "write_details",
]
