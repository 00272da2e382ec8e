"""mmfv-tiny training batches: the explicit "parts" form names each item's relation by its parts and
answers with the object at that relation's grid offset; in-context batches keep one cardinal relation."""

from __future__ import annotations

import torch

from mmfv import relations as R
from mmfv.models.tiny import batches as B
from mmfv.models.tiny import train as T
from mmfv.models.tiny.tokenizer import A, DOT, IMG, Q, TinyTokenizer


def _bank(n=120):
    cfg = T.TrainConfig(**{**T.QUICK, "bank": n})
    tok = TinyTokenizer.default(cfg.grid ** 2)
    return B.build_bank(cfg, tok, n, "test"), tok, cfg.grid ** 2


def test_parts_batch_names_each_relation_and_answers_at_its_offset():
    bank, tok, P = _bank()
    gen = torch.Generator().manual_seed(0)
    ids, px, ans_pos, a, rel, cells = B.make_parts_batch(bank, 16, 5, gen, tok, P)
    assert ids.shape == (16, 1 + 5 * (P + 9)) and px.shape[0] == 16 * 5 and cells.shape == (16, 5, P)
    assert (ids[:, ans_pos] == A).all() and (ids[:, ans_pos - 5] == Q).all() and (ids[:, ans_pos - P - 6] == 0).sum() == 0
    assert set(rel.unique().tolist()) > set(range(len(R.CARDINAL), len(R.SPATIAL)))  # diagonals drawn too
    g = bank.grid
    for b in range(16):
        for i in range(5):
            r = R.SPATIAL[int(rel[b, i])]
            v, h = ids[b, ans_pos[i] - 3], ids[b, ans_pos[i] - 2]
            words = {tok.vocab[int(t)] for t in (v, h) if int(t) != DOT}
            assert words == (set(R.decompose(r)) if r in R.NOVEL else {r})
            # the answer is the object in the cell at the relation's offset from the query's cell
            q_cell = int((cells[b, i] == ids[b, ans_pos[i] - 4]).nonzero())
            dr, dc = R.offset(r)
            assert int(a[b, i]) == int(cells[b, i, (q_cell // g + dr) * g + q_cell % g + dc])
            assert int(ids[b, ans_pos[i] + 1]) == int(a[b, i])
    assert (ids == IMG).sum() == 16 * 5 * P


def test_offsets_follow_relations():
    assert B.OFFSETS.shape == (len(R.SPATIAL), 2)
    assert B.OFFSETS[R.SPATIAL.index("above_left")].tolist() == [-1.0, -1.0]
    assert (B.OFFSETS[R.SPATIAL.index("above")] + B.OFFSETS[R.SPATIAL.index("left")]).tolist() == [-1.0, -1.0]


def test_offset_probe_trains_and_stays_out_of_the_shipped_weights(tmp_path):
    cfg = T.TrainConfig(**{**T.QUICK, "steps": 6, "eval_every": 3, "bank": 200, "eval_sequences": 8, "explicit_form": "parts",
                           "explicit_start": 0.5, "explicit_end": 0.5, "offset_weight": 1.0, "offset_layer": 1})
    card = T.train(cfg, tmp_path, log=lambda *_: None)
    last = card["history"][-1]
    assert last["train_offset_mse"] > 0 and set(last["eval_parts_acc"]) == {"cardinal", "diagonal"}
    from safetensors import safe_open

    with safe_open(str(tmp_path / "model.safetensors"), "pt") as f:
        assert not any("probe" in k for k in f.keys())
    again = T.train(cfg, tmp_path, log=lambda *_: None)  # resumes at the end, probe state included
    assert again["steps_done"] == 6


def test_bad_offset_layer_is_refused():
    import pytest

    with pytest.raises(ValueError, match="offset_layer"):
        T.TrainConfig(**{**T.QUICK, "offset_layer": 5, "offset_weight": 1.0})
    with pytest.raises(ValueError, match="explicit_form"):
        T.TrainConfig(explicit_form="both")


def test_icl_batch_over_all_spatial_relations_keeps_one_relation_per_sequence():
    bank, tok, P = _bank()
    gen = torch.Generator().manual_seed(1)
    ids, px, ans_pos, a, rel, cells, _ = B.make_batch(bank, 32, 4, False, gen, tok, P, relations=len(R.SPATIAL))
    assert rel.shape == (32,) and int(rel.max()) >= len(R.CARDINAL)  # diagonal sequences drawn
    g = bank.grid
    for b in range(32):
        dr, dc = R.offset(R.SPATIAL[int(rel[b])])
        for i in range(4):  # every item of a sequence answers with the object at its relation's offset
            q_cell = int((cells[b, i] == ids[b, ans_pos[i] - 2]).nonzero())
            assert int(a[b, i]) == int(cells[b, i, (q_cell // g + dr) * g + q_cell % g + dc])
    import pytest

    with pytest.raises(ValueError, match="parts form"):
        B.make_batch(bank, 4, 2, True, gen, tok, P, relations=len(R.SPATIAL))
