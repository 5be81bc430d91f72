"""Tiny random models for tests and benchmarks: a Llama with a real BPE tokenizer, a BERT (classifier or
headless) with a WordPiece tokenizer. Test fixtures, not part of the package."""
from __future__ import annotations

from pathlib import Path


def make_tiny_llama(out_dir: str, *, vocab_size: int = 1000, tie_word_embeddings: bool = False,
                    seed: int = 0, layers: int = 2) -> str:
    """A small random Llama with a real BPE tokenizer (trained here on a few words), saved as safetensors.

    vocab_size 1000 is deliberately not a multiple of 64, so SGLang pads the vocabulary rows.
    """
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    words = ("It was terrible great good bad movie film the a and of to is this that not very fun "
             "boring awful wonderful story acting plot Yes No Maybe true false").split()
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    corpus = [" ".join(words[i:] + words[:i]) for i in range(len(words))] * 20
    tok.train_from_iterator(corpus, trainers.BpeTrainer(
        vocab_size=min(vocab_size, 600), special_tokens=["<unk>", "<s>", "</s>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", tok.token_to_id("<s>"))])
    hf_tok = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                     unk_token="<unk>", pad_token="<pad>")
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab_size, hidden_size=64, intermediate_size=128,
                      num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=512, bos_token_id=1, eos_token_id=2, pad_token_id=3,
                      tie_word_embeddings=tie_word_embeddings)
    model = LlamaForCausalLM(cfg)
    with torch.no_grad():  # visible norms/biases differences so a wrong mapping cannot hide
        for n, p in model.named_parameters():
            if p.dim() == 1:
                p.add_(torch.randn_like(p) * 0.1)
    model.save_pretrained(out_dir)
    hf_tok.save_pretrained(out_dir)
    return out_dir


def make_tiny_bert(out_dir: str, *, num_labels: int = 3, seed: int = 0, headless: bool = False,
                   activation: str | None = None) -> str:
    """A small random BERT (classifier, or headless BertModel) with a WordPiece tokenizer over a few words.

    vocab_size 1000 and type_vocab_size 2 are padded by SGLang (64-row multiples); `activation` sets the
    sentence-transformers cross-encoder activation SGLang would apply (the backend must undo it)."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertModel, BertTokenizerFast

    words = ("it was terrible great good bad movie film the a and of to is this that not very fun "
             "boring awful wonderful story acting plot yes no maybe true false").split()
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + words
    vocab += [f"w{i}" for i in range(1000 - len(vocab))]
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    (Path(out_dir) / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tok = BertTokenizerFast(str(Path(out_dir) / "vocab.txt"))
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=1000, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=128, max_position_embeddings=128, num_labels=num_labels)
    if activation:
        cfg.sbert_ce_default_activation_function = activation
    model = BertModel(cfg) if headless else BertForSequenceClassification(cfg)
    with torch.no_grad():  # O(1) logits and visible norm/bias values, so a wrong mapping cannot hide
        for n, p in model.named_parameters():
            p.add_(torch.randn_like(p) * (0.1 if p.dim() == 1 else 1.0 if n.startswith("classifier") else 0.05))
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    return out_dir


def make_tiny_roberta(out_dir: str, *, num_labels: int = 2, seed: int = 0, headless: bool = False,
                      centre_on: list[str] | None = None) -> str:
    """A small random RoBERTa (RobertaForSequenceClassification, or a headless RobertaModel) with a real
    byte-level BPE RobertaTokenizerFast (vocab.json + merges.txt trained here on a few words, offline).
    `centre_on`: texts whose mean logits the head's output bias subtracts, so a random classifier's
    predictions split between the classes on such text (otherwise every input gets the same class and
    the accuracy objective has nothing to move).

    RoBERTa's own conventions, so a mapping that ignored them could not pass: pad_token_id 1 with
    positions counted from padding_idx + 1 (max_position_embeddings 130 = 128 tokens + 2),
    type_vocab_size 1, layer_norm_eps 1e-5 and `<s> … </s>` framing from the tokenizer."""
    import json

    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import RobertaConfig, RobertaForSequenceClassification, RobertaModel, RobertaTokenizerFast

    words = ("it was terrible great good bad movie film the a and of to is this that not very fun "
             "boring awful wonderful story acting plot yes no maybe true false").split()
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    corpus = [" ".join(words[i:] + words[:i]) for i in range(len(words))] * 20
    bpe.train_from_iterator(corpus, trainers.BpeTrainer(
        vocab_size=500, special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"],  # RoBERTa's ids 0-4
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = json.loads(bpe.to_str())["model"]
    (out / "vocab.json").write_text(json.dumps(state["vocab"]))
    merges = [m if isinstance(m, str) else " ".join(m) for m in state["merges"]]
    (out / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    tok = RobertaTokenizerFast(str(out / "vocab.json"), str(out / "merges.txt"), model_max_length=128)
    torch.manual_seed(seed)
    cfg = RobertaConfig(vocab_size=1000, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=128, max_position_embeddings=130, type_vocab_size=1,
                        pad_token_id=1, bos_token_id=0, eos_token_id=2, layer_norm_eps=1e-5,
                        num_labels=num_labels)
    model = RobertaModel(cfg, add_pooling_layer=False) if headless else RobertaForSequenceClassification(cfg)
    with torch.no_grad():  # O(1) logits and visible norm/bias values, so a wrong mapping cannot hide
        for n, p in model.named_parameters():
            p.add_(torch.randn_like(p) * (0.1 if p.dim() == 1 else 0.3 if n.startswith("classifier") else 0.05))
        if centre_on and not headless:
            batch = tok(list(centre_on), padding=True, truncation=True, return_tensors="pt")
            model.classifier.out_proj.bias.sub_(model.eval()(**batch).logits.mean(0))
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    return out_dir
