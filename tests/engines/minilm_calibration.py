"""Calibration data for the demo MiniLM, made here from sentences (no download): the tests' and bench's source."""

from __future__ import annotations

from pathlib import Path

import numpy as np

SENTENCES = [
    "The cat sat on the warm windowsill all afternoon.",
    "A dog barked at the mail carrier twice this morning.",
    "Stock markets fell sharply after the interest rate announcement.",
    "The central bank kept rates unchanged for the third month.",
    "How do I reset my password on the company portal?",
    "My laptop battery drains much faster than it used to.",
    "The recipe calls for two cups of flour and a pinch of salt.",
    "Bake the bread at two hundred degrees for forty minutes.",
    "The football team won the championship in extra time.",
    "She ran the marathon in just under three hours.",
    "Quantum computers use qubits instead of classical bits.",
    "Neural networks learn representations from large datasets.",
    "The museum opens a new exhibition on ancient Egypt next week.",
    "Tickets for the concert sold out within minutes.",
    "Heavy rain is expected across the north this weekend.",
    "The forecast says it will be sunny and warm tomorrow.",
    "Please send the quarterly report before Friday noon.",
    "The meeting was moved to the large conference room.",
    "Our flight was delayed by two hours because of fog.",
    "The hotel room had a beautiful view of the harbour.",
    "Regular exercise improves both mood and sleep quality.",
    "The doctor recommended drinking more water every day.",
    "A new species of frog was discovered in the rainforest.",
    "Bees are essential pollinators for many food crops.",
    "The server returned an error when the request timed out.",
    "Inference latency dropped after we enabled dynamic batching.",
    "The novel tells the story of two sisters in post-war Berlin.",
    "He reads poetry every evening before going to sleep.",
    "The electric car can drive four hundred kilometres on one charge.",
    "Traffic on the motorway was backed up for miles.",
    "The garden is full of tomatoes, beans and courgettes this year.",
    "Remember to water the plants while I am away.",
    "The company announced record profits for the fiscal year.",
    "Several employees were promoted after the reorganisation.",
    "The children built a sandcastle on the beach.",
    "We watched the sunset from the top of the hill.",
    "The vaccine trial showed strong protection against the virus.",
    "Researchers published their findings in a leading journal.",
    "The old bridge will be closed for repairs until spring.",
    "The city council approved the new bicycle lanes.",
    "Can you recommend a good Italian restaurant nearby?",
    "The pizza was delicious but the service was slow.",
    "The orchestra played Beethoven's fifth symphony.",
    "The guitarist broke a string in the middle of the song.",
    "Solar panels on the roof now cover most of our electricity.",
    "Wind turbines were installed off the coast last year.",
    "The chess champion defended her title in a tense final.",
    "A short walk after lunch helps with concentration.",
]


def write_minilm_calibration(model_dir: Path, tokenizer_json: Path, batch: int = 8) -> list[Path]:
    """<model_dir>/calibration/NN.npz: input_ids and attention_mask of `batch` sentences each."""
    from tensorgate.server.demo.minilm import MiniLMFiles, load_tokenizer

    tok = load_tokenizer(MiniLMFiles(safetensors=tokenizer_json, tokenizer_json=tokenizer_json))
    folder = model_dir / "calibration"
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(0, len(SENTENCES), batch):
        enc = tok.encode_batch(SENTENCES[i : i + batch])
        path = folder / f"{i // batch:02d}.npz"
        np.savez(
            path,
            input_ids=np.array([e.ids for e in enc], dtype=np.int64),
            attention_mask=np.array([e.attention_mask for e in enc], dtype=np.int64),
        )
        paths.append(path)
    return paths
