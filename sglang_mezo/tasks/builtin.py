"""The built-in tasks: MeZO's prompts (princeton-nlp/MeZO large_models/templates.py, the class named at
each task) over the copies shipped in sglang_mezo/data (tools/ship_data.py; each task's PROVENANCE.md).

Candidates are the exact text MeZO's `verbalize` appends to its `encode` prompt (its encode_prompt strips
only spaces, never newlines): after a prompt that ends mid-line the word carries its leading space
(SST-2 " great", COPA " the ..."); after the PromptSource templates, which end in "\\n", it does not
("Yes", as in MeZO's "...Yes or No?\\nYes"). Both forms are one token for GPT-2/OPT/Llama-style BPE.
Candidate order is MeZO's label order (SuperGLUE's integer labels), so a label index means the same here.

Splits: "train" is the task's train file, "test" the SuperGLUE validation set (MeZO tests on it; the
official test files have no labels and are never used), "dev" the FewGLUE dev32 file where there is one.
"""
from __future__ import annotations

from .spec import Example, TaskError, TaskSpec

YES_NO = {"true": "Yes", "false": "No"}


def _alternate_half(split: str, examples: list[Example]) -> list[Example]:
    """Deterministic stratified halves of one pooled file: within each class, in file order, even positions
    go to "train" and odd ones to "test" (no RNG, so the carve cannot change with a seed or a library)."""
    seen: dict[int, int] = {}
    out = []
    for ex in examples:
        n = seen[ex.label] = seen.get(ex.label, -1) + 1
        if (n % 2 == 0) == (split == "train"):
            out.append(ex)
    return out


def _nli(name: str, folder: str) -> TaskSpec:
    """MNLI/SNLI. LM-BFF's RoBERTa prompt `<s1> ? [MASK] , <s2>` puts the label word mid-sentence, which a
    causal LM cannot score as a continuation, so we use MeZO's causal-LM prompt for 3-way NLI, CBTemplate,
    with LM-BFF's words (entailment Yes, contradiction No, neutral Maybe).

    Data: only the pooled LM-BFF 8-shot samples (240 rows, all from the original train set) exist here, so
    train and test are the two halves of that file (`_alternate_half`): MNLI 120 / 120 (40 per class each),
    SNLI 121 / 119. Train + dev (both from the train half) then hold k <= 20 per class for MNLI, k <= 19
    for SNLI (k = 16 works; 512 raises TaskError). The test half is held-out train data, not MNLI-m or
    SNLI test, so its scores are not comparable with the paper's."""
    pooled = f"{folder}/jsonl/pooled_kshot_from_train.jsonl"
    return TaskSpec(
        name=name, files={"train": pooled, "test": pooled},
        template='Suppose {premise} Can we infer that "{hypothesis}"? Yes, No, or Maybe?\n',
        label_words={"entailment": "Yes", "contradiction": "No", "neutral": "Maybe"},
        select=_alternate_half)


def _boolq_rows(row: dict) -> list[dict]:
    # BoolQTemplateV3 (MeZO's default BoolQ template, get_template(template_version=2)): "?" added, capitalised
    q = row["question"].strip()
    q = q if q.endswith("?") else q + "?"
    return [{**row, "question": q[:1].upper() + q[1:]}]


def _wsc_rows(row: dict) -> list[dict]:
    t = row["target"]
    return [{**row, "span1": t["span1_text"], "span2": t["span2_text"].lower()}]


def _multirc_rows(row: dict) -> list[dict]:
    """One example per (question, answer) pair of a paragraph, as SuperGLUE/HF `super_glue/multirc` does."""
    p = row["passage"]
    return [{"paragraph": p["text"], "question": q["question"], "answer": a["text"], "label": a["label"]}
            for q in p["questions"] for a in q["answers"]]


def _copa(row: dict) -> Example:
    """CopaTemplate: premise without its final "." + " because" (cause) / " so" (effect); each candidate is
    an alternative with its first word lower-cased unless it is "I" (capitalization="correct")."""
    conj = {"cause": " because", "effect": " so"}.get(row["question"])
    if conj is None:
        raise TaskError(f"unknown COPA question {row['question']!r} (cause or effect)")
    if row["label"] not in (0, 1):
        raise TaskError(f"unknown label {row['label']!r} (0 = choice1, 1 = choice2)")
    premise = row["premise"].rstrip()
    premise = premise[:-1] if premise.endswith(".") else premise

    def cap(choice: str) -> str:
        words = choice.split(" ")
        return " ".join([words[0] if words[0] == "I" else words[0].lower()] + words[1:])

    return Example(premise + conj, [" " + cap(row["choice1"]), " " + cap(row["choice2"])], row["label"])


def _superglue(folder: str, dev: bool = True) -> dict[str, str]:
    if dev:  # FewGLUE (32 train, 32 dev) + the full SuperGLUE validation set
        return {"train": f"{folder}/fewglue_32dev/train.jsonl", "dev": f"{folder}/fewglue_32dev/dev32.jsonl",
                "test": f"{folder}/fewglue_32dev/val.jsonl"}
    return {"train": f"{folder}/superglue/train.jsonl", "test": f"{folder}/superglue/val.jsonl"}


# SST2Template: "<sentence> It was" -> " terrible" / " great".
# Files: the LM-BFF layout MeZO samples from (train 6,920 sentences; its dev.tsv, 872, is the test set).
SST2 = TaskSpec(
    name="sst2",
    files={"train": "SST-2/lmbff_original/train.tsv", "test": "SST-2/lmbff_original/dev.tsv"},
    template="{sentence} It was",
    label_words={"0": " terrible", "1": " great"},
)

# RTETemplate (PromptSource); full SuperGLUE train 2,490 / val 277 (test.jsonl is unlabeled).
RTE = TaskSpec(
    name="rte", files=_superglue("RTE", dev=False),
    template='{premise}\nDoes this mean that "{hypothesis}" is true? Yes or No?\n',
    label_words={"entailment": "Yes", "not_entailment": "No"})

# CBTemplate (PromptSource); FewGLUE train 32 (3 neutral) / dev32 32 (2 neutral) / val 56.
CB = TaskSpec(
    name="cb", files=_superglue("CB"),
    template='Suppose {premise} Can we infer that "{hypothesis}"? Yes, No, or Maybe?\n',
    label_words={"entailment": "Yes", "contradiction": "No", "neutral": "Maybe"})

# BoolQTemplateV3; candidates ["Yes", "No"] as MeZO's BoolQDataset. FewGLUE 32 / 32 / val 3,270.
BOOLQ = TaskSpec(
    name="boolq", files=_superglue("BoolQ"), template="{passage} {question}\n",
    label_words=YES_NO, expand=_boolq_rows)

# WSCTemplate (PromptSource); full SuperGLUE train 554 / val 104 (FewGLUE's WSC train is all positives).
WSC = TaskSpec(
    name="wsc", files=_superglue("WSC", dev=False),
    template='{text}\nIn the previous sentence, does the pronoun "{span2}" refer to {span1}? Yes or No?\n',
    label_words={"false": "No", "true": "Yes"}, expand=_wsc_rows)

# WICTemplate (PromptSource); FewGLUE 32 / 32 / val 638.
WIC = TaskSpec(
    name="wic", files=_superglue("WiC"),
    template='Does the word "{word}" have the same meaning in these two sentences? Yes, No?\n'
             "{sentence1}\n{sentence2}\n",
    label_words={"false": "No", "true": "Yes"})

# MultiRCTemplate (PromptSource); FewGLUE paragraphs 32 / 32 / val 83 -> 154 / 167 / 4,848 answers.
MULTIRC = TaskSpec(
    name="multirc", files=_superglue("MultiRC"),
    template='{paragraph}\nQuestion: {question}\nI found this answer "{answer}". Is that correct? Yes or No?\n',
    label_words={"0": "No", "1": "Yes"}, expand=_multirc_rows)

# CopaTemplate; the candidates are whole clauses, so they are scored as multi-token spans.
COPA = TaskSpec(name="copa", files=_superglue("COPA"), build=_copa, single_token_labels=False)

MNLI = _nli("mnli", "MNLI")
SNLI = _nli("snli", "SNLI")

BUILTIN: dict[str, TaskSpec] = {t.name: t for t in
                                (SST2, RTE, CB, BOOLQ, WSC, WIC, MULTIRC, COPA, MNLI, SNLI)}
