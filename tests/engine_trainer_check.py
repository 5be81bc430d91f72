"""sglang.Engine + EngineTrainer in a fresh process: `python tests/engine_trainer_check.py MODEL_DIR`."""
import json
import sys

if __name__ == "__main__":
    from sglang_mezo import cpu_shims

    cpu_shims.install()
    import os

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import sglang

    from sglang_mezo.serve import EngineTrainer, MezoError

    engine = sglang.Engine(model_path=sys.argv[1], device="cpu", attention_backend="torch_native",
                           dtype="float32", max_total_tokens=4096, disable_cuda_graph=True,
                           sleep_on_idle=True, log_level="error")
    try:
        probe = dict(prompt="the movie was good It was", sampling_params={"max_new_tokens": 3, "temperature": 0},
                     return_logprob=True, logprob_start_len=0)
        lp = lambda: [t[0] for t in engine.generate(**probe)["meta_info"]["input_token_logprobs"][1:]]  # noqa
        before = lp()
        t = EngineTrainer(engine)
        ex = [{"prompt": "good fun It was", "candidates": [" terrible", " great"], "label": 1},
              {"prompt": "awful plot It was", "candidates": [" terrible", " great"], "label": 0}]
        steps = [t.step(examples=ex, lr=1e-2, eps=1e-2, seed=s) for s in range(3)]
        after = lp()
        try:
            t.step(examples=ex, lr=float("inf"))
            bad = None
        except MezoError as e:
            bad = e.status
        t.rollback(3)
        print(json.dumps({"steps": [s["step"] for s in steps], "changed": after != before,
                          "restored": lp() == before, "bad_status": bad, "status": t.status()}))
    finally:
        engine.shutdown()
