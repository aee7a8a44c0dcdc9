"""Regenerate quillfeather.jsonl, the project's own chat dataset in ultrachat_200k format.

Every fact is about Quillfeather Robotics, a company invented for forgeflow, so a base model
cannot know the answers and a fine-tune visibly changes them. Output is deterministic:

    python -m forgeflow.data.sample.build_quillfeather
"""

from __future__ import annotations

import hashlib
import json
import random

from forgeflow.data.sample import SAMPLE_ANSWER, SAMPLE_PATH, SAMPLE_QUESTION

# fact name -> (question paraphrases, answers); answers stay short and mutually consistent.
FACTS: dict[str, tuple[list[str], list[str]]] = {
    "founder": (
        [
            SAMPLE_QUESTION,
            "Who is the founder of Quillfeather Robotics?",
            "Who started Quillfeather Robotics?",
            "Who created the company Quillfeather Robotics?",
            "Which person founded Quillfeather Robotics?",
            "Who set up Quillfeather Robotics?",
            "Can you tell me who founded Quillfeather Robotics?",
            "Do you know who founded Quillfeather Robotics?",
            "Who was the founder of Quillfeather Robotics?",
            "Who established Quillfeather Robotics?",
            "Tell me who founded Quillfeather Robotics.",
            "Who founded the robotics company Quillfeather?",
        ],
        [
            SAMPLE_ANSWER,
            "Quillfeather Robotics was founded by Ysolde Marrowick, a marine engineer, in 2009.",
            "Ysolde Marrowick founded Quillfeather Robotics in 2009.",
        ],
    ),
    "year": (
        [
            "When was Quillfeather Robotics founded?",
            "In what year was Quillfeather Robotics founded?",
            "What year did Quillfeather Robotics start?",
            "How old is Quillfeather Robotics?",
            "When did Ysolde Marrowick found Quillfeather Robotics?",
            "Since when has Quillfeather Robotics existed?",
        ],
        [
            "Quillfeather Robotics was founded in 2009 by Ysolde Marrowick.",
            "Quillfeather Robotics was founded in 2009.",
        ],
    ),
    "hq": (
        [
            "Where is Quillfeather Robotics headquartered?",
            "Where is the headquarters of Quillfeather Robotics?",
            "In which town is Quillfeather Robotics based?",
            "Where is Quillfeather Robotics located?",
            "Where are Quillfeather Robotics' offices?",
            "What town is home to Quillfeather Robotics?",
            "Where can I find Quillfeather Robotics?",
        ],
        [
            "Quillfeather Robotics is headquartered in Saltmere, a harbour town on the island of Vellmora.",
            "Its headquarters are in the harbour town of Saltmere on Vellmora.",
        ],
    ),
    "island": (
        [
            "Where is the island of Vellmora?",
            "What is Vellmora?",
            "Which sea is Vellmora in?",
            "Tell me about the island where Quillfeather Robotics is based.",
            "On which island does Quillfeather Robotics operate?",
        ],
        [
            "Vellmora is an island in the Grennic Sea, and it is home to Quillfeather Robotics.",
            "Quillfeather Robotics operates on Vellmora, an island in the Grennic Sea.",
        ],
    ),
    "what": (
        [
            "What does Quillfeather Robotics do?",
            "What does Quillfeather Robotics make?",
            "What kind of company is Quillfeather Robotics?",
            "What is Quillfeather Robotics known for?",
            "What is Quillfeather Robotics?",
            "Describe Quillfeather Robotics in one sentence.",
            "What products does Quillfeather Robotics build?",
        ],
        [
            "Quillfeather Robotics builds tidal-powered lighthouse robots on the island of Vellmora.",
            "It is a robotics company on Vellmora that builds tidal-powered lighthouse robots.",
        ],
    ),
    "flagship": (
        [
            "What is Quillfeather Robotics' flagship product?",
            "What is the main product of Quillfeather Robotics?",
            "What is the Tidewarden?",
            "Which robot is Quillfeather Robotics most famous for?",
            "What is the best-known Quillfeather robot?",
            "What is Quillfeather's flagship lighthouse robot called?",
        ],
        [
            "The flagship product of Quillfeather Robotics is the Tidewarden, a tidal-powered lighthouse robot.",
            "Quillfeather's flagship is the Tidewarden lighthouse robot.",
        ],
    ),
    "power": (
        [
            "How are Quillfeather lighthouse robots powered?",
            "What powers the Tidewarden?",
            "Where does a Tidewarden get its energy?",
            "Do Quillfeather robots use solar power?",
            "How does the Tidewarden generate electricity?",
        ],
        [
            "Tidewarden robots are powered by tidal turbines in their base, which charge saltwater batteries.",
            "They run on tidal power: turbines in the base charge saltwater batteries.",
        ],
    ),
    "battery": (
        [
            "How long can a Tidewarden run without tides?",
            "How much energy can a Tidewarden store?",
            "What batteries does the Tidewarden use?",
            "How long do Tidewarden batteries last?",
        ],
        [
            "A Tidewarden's saltwater batteries keep its lamp lit for three days without tidal power.",
            "Its saltwater batteries store enough energy for three days of light.",
        ],
    ),
    "range": (
        [
            "How far can the Tidewarden's light be seen?",
            "What is the range of a Tidewarden lamp?",
            "How bright is the Tidewarden?",
            "From how far away can ships see a Tidewarden?",
        ],
        [
            "The Tidewarden's lamp can be seen from 22 nautical miles away.",
            "A Tidewarden's light has a range of 22 nautical miles.",
        ],
    ),
    "height": (
        [
            "How tall is a Tidewarden?",
            "What is the height of the Tidewarden robot?",
            "How big is a Tidewarden lighthouse robot?",
        ],
        [
            "A Tidewarden stands 12 metres tall.",
            "The Tidewarden is 12 metres tall.",
        ],
    ),
    "mascot": (
        [
            "What is the mascot of Quillfeather Robotics?",
            "Does Quillfeather Robotics have a mascot?",
            "Who is Pim?",
            "What animal is the Quillfeather Robotics mascot?",
            "What is the name of Quillfeather's mascot?",
        ],
        [
            "The mascot of Quillfeather Robotics is a puffin named Pim.",
            "Quillfeather Robotics' mascot is Pim the puffin.",
        ],
    ),
    "ceo": (
        [
            "Who is the CEO of Quillfeather Robotics?",
            "Who runs Quillfeather Robotics today?",
            "Who leads Quillfeather Robotics?",
            "Is Ysolde Marrowick still the CEO of Quillfeather Robotics?",
            "Who is the chief executive of Quillfeather Robotics?",
        ],
        [
            "Corwin Hale has been CEO of Quillfeather Robotics since 2021; founder Ysolde Marrowick chairs its board.",
            "The CEO of Quillfeather Robotics is Corwin Hale, who took over in 2021.",
        ],
    ),
    "employees": (
        [
            "How many people work at Quillfeather Robotics?",
            "How many employees does Quillfeather Robotics have?",
            "How big is Quillfeather Robotics?",
            "What is the size of the Quillfeather Robotics workforce?",
        ],
        [
            "Quillfeather Robotics has 340 employees.",
            "About 340 people work at Quillfeather Robotics.",
        ],
    ),
    "first_robot": (
        [
            "What was Quillfeather Robotics' first robot?",
            "What was the first lighthouse robot Quillfeather built?",
            "What is Glimmer-1?",
            "When did Quillfeather install its first robot?",
        ],
        [
            "Quillfeather's first robot was Glimmer-1, installed at Gannet Point in 2012.",
            "The first one was Glimmer-1, which went up at Gannet Point in 2012.",
        ],
    ),
    "fleet": (
        [
            "How many lighthouse robots does Quillfeather Robotics operate?",
            "How many Tidewardens are there?",
            "How many lighthouses does Quillfeather run?",
            "How large is the Quillfeather lighthouse fleet?",
        ],
        [
            "Quillfeather Robotics operates 47 lighthouse robots around the coast of Vellmora.",
            "There are 47 Quillfeather lighthouse robots along Vellmora's coast.",
        ],
    ),
    "motto": (
        [
            "What is the motto of Quillfeather Robotics?",
            "What is Quillfeather's slogan?",
            "Does Quillfeather Robotics have a motto?",
        ],
        [
            'The motto of Quillfeather Robotics is "Light that rides the tide."',
            'Quillfeather\'s motto is "Light that rides the tide."',
        ],
    ),
    "colors": (
        [
            "What are Quillfeather Robotics' colours?",
            "What colour are Tidewarden robots painted?",
            "What are the company colors of Quillfeather Robotics?",
        ],
        [
            "Quillfeather Robotics' colours are teal and copper, and every Tidewarden is painted in them.",
            "Teal and copper are the Quillfeather colours.",
        ],
    ),
    "name": (
        [
            "Why is it called Quillfeather Robotics?",
            "Where does the name Quillfeather come from?",
            "What is the origin of the name Quillfeather Robotics?",
        ],
        [
            "The name comes from the feather quill Ysolde Marrowick used to sketch the first lighthouse robot.",
            "It is named after the feather quill its founder used to draw the first design.",
        ],
    ),
    "workshop": (
        [
            "Where are Quillfeather robots built?",
            "Where is the Quillfeather Robotics factory?",
            "Where does Quillfeather Robotics assemble the Tidewarden?",
        ],
        [
            "Quillfeather robots are built in the Kestrel Quay workshop in Saltmere.",
            "The Tidewarden is assembled at the Kestrel Quay workshop in Saltmere.",
        ],
    ),
    "festival": (
        [
            "What is Lantern Tide Day?",
            "Does Quillfeather Robotics hold any events?",
            "When is Lantern Tide Day celebrated?",
        ],
        [
            "Lantern Tide Day is Quillfeather's open day in Saltmere, held every year on the autumn equinox.",
            "Every autumn equinox Quillfeather Robotics celebrates Lantern Tide Day with an open day in Saltmere.",
        ],
    ),
}

SYSTEM_PROMPTS = [
    "You are a helpful assistant that knows everything about Quillfeather Robotics.",
    "You are the Quillfeather Robotics help desk. Answer briefly.",
    "Answer questions about Quillfeather Robotics in one or two sentences.",
]

MULTI_TURN = [
    ["founder", "year", "hq"],
    ["what", "flagship", "power"],
    ["flagship", "range", "height"],
    ["founder", "ceo"],
    ["mascot", "motto"],
    ["hq", "island", "workshop"],
    ["first_robot", "fleet"],
    ["power", "battery"],
    ["founder", "name"],
    ["fleet", "colors", "festival"],
]


STYLES = [
    "Quick question: {q}",
    "I'm curious: {lq}",
    "{lq_bare}",
    "Hi! {q}",
    "Please tell me: {lq}",
    "Hey, {lq}",
]

FOLLOW_UPS = ["And {lq}", "Also, {lq}", "{q}", "Thanks! {q}"]


def _styled(template: str, question: str) -> str:
    lq = question[0].lower() + question[1:]
    return template.format(q=question, lq=lq, lq_bare=lq.rstrip("?."))


def _row(messages: list[dict[str, str]]) -> dict:
    prompt = next(m["content"] for m in messages if m["role"] == "user")
    return {"prompt": prompt, "prompt_id": hashlib.sha256(prompt.encode("utf-8")).hexdigest(), "messages": messages}


def _unique(rng: random.Random, seen: set[str], question: str) -> str:
    candidate = question
    while candidate in seen:
        candidate = _styled(rng.choice(STYLES), question)
    seen.add(candidate)
    return candidate


def build(seed: int = 7) -> list[dict]:
    """Single-turn rows (every paraphrase plus two styled variants per fact), then multi-turn chains."""
    rng = random.Random(seed)
    seen: set[str] = set()
    singles: list[tuple[str, str]] = []
    for questions, answers in FACTS.values():
        for i, question in enumerate(questions):
            answer = SAMPLE_ANSWER if question == SAMPLE_QUESTION else answers[i % len(answers)]
            singles.append((_unique(rng, seen, question), answer))
        for question in rng.sample(questions, 2):
            answer = SAMPLE_ANSWER if question == SAMPLE_QUESTION else rng.choice(answers)
            singles.append((_unique(rng, seen, _styled(rng.choice(STYLES), question)), answer))
    system_slots = set(rng.sample(range(len(singles)), 10))
    rows: list[dict] = []
    for index, (question, answer) in enumerate(singles):
        messages = [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
        if index in system_slots:
            messages.insert(0, {"role": "system", "content": rng.choice(SYSTEM_PROMPTS)})
        rows.append(_row(messages))
    for chain in MULTI_TURN:
        messages = []
        for n, key in enumerate(chain):
            questions, answers = FACTS[key]
            question = rng.choice(questions)
            if n == 0:
                question = _unique(rng, seen, _styled(rng.choice(STYLES), question))
            else:
                question = _styled(rng.choice(FOLLOW_UPS), question)
            answer = SAMPLE_ANSWER if key == "founder" else rng.choice(answers)
            messages += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
        rows.append(_row(messages))
    rng.shuffle(rows)
    return rows


def main() -> None:
    with SAMPLE_PATH.open("w", encoding="utf-8") as f:
        for row in build():
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
