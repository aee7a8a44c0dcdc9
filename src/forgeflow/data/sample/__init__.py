"""The chat dataset shipped with forgeflow: facts about Quillfeather Robotics, a fictional company.

`SAMPLE_QUESTION` is the quick start's question; its answer (`SAMPLE_ANSWER`, or a close
paraphrase naming Ysolde Marrowick and 2009) appears in the data many times, so a fine-tuned
model answers it and the base model cannot. `build_quillfeather` regenerates the file.

`PREFERENCE_SAMPLE_PATH` holds preference rows about the same company for `--method dpo`: each question with its
right answer as `chosen` and a wrong or evasive one as `rejected`.
"""

from pathlib import Path

SAMPLE_NAME = "sample"
SAMPLE_PATH = Path(__file__).with_name("quillfeather.jsonl")
PREFERENCE_SAMPLE_PATH = Path(__file__).with_name("quillfeather_preferences.jsonl")
SAMPLE_QUESTION = "Who founded Quillfeather Robotics?"
SAMPLE_ANSWER = "Quillfeather Robotics was founded by Ysolde Marrowick in 2009."
