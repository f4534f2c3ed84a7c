#!/usr/bin/env python
"""Exploratory probe (issue 20): can training the cross-encoder g over the prior make ``prior + g`` beat the prior
on held-out judged queries? A minimal, self-contained loop (plain AdamW, linear warm-up/decay, bf16 autocast on
CPU, grad-norm clip 1) beside the library's, so the two can cross-check each other; the pipeline's own stage is
``pipeline.reranker_pretrain`` (``scripts/pretrain_reranker.py``).

    python scripts/probe_reranker_residual.py CONFIG PRIOR_DIR OUT N_QUERIES EPOCHS [key=value ...] [--eval-every-epoch]

keys: ``kind`` = ict (a sentence cut out of each passage is the query; every passage loses one sentence), title
(the title is the query; passages lose their titles) or labels (the judged train queries of fold A -- a hash of the
query id, even; ``fold=1``: odd -- on the original corpus; N_QUERIES is ignored); ``lr_body``, ``lr_head``,
``batch``; ``kind=graded``: as labels, but each list also holds up to 3 more judged passages of the query and
the target is their grades, normalised (ListNet over gains); ``init``: the cross-encoder to start from (a folder).
Lists: the positive and G-1 negatives sampled from the base encoder's top ``mining.depth``. The prior's
log-probabilities are added to g (listwise CE, positive at column 0). Held-out check: the dev + judged train queries
(fold B only with kind=labels), the base encoder's top ``eval.rerank_depth`` re-ranked by ``prior + g`` against the
prior alone (nDCG@10, paired randomization test). Writes OUT/log.txt, OUT/results.json and OUT/reranker/.
"""
import hashlib
import json
import math
import random
import re
import sys
import time
from pathlib import Path

import numpy as np
import torch

from rocketkd.candidates.title_queries import content_words, near_held_out
from rocketkd.config import load_config
from rocketkd.data import Corpus, load_retrieval_data
from rocketkd.evaluation.compare import paired_randomization_test
from rocketkd.evaluation.metrics import evaluate_run
from rocketkd.models.loading import load_reranker, load_retriever
from rocketkd.search.index import DenseIndex, search_run
from rocketkd.teachers import RetrieverScorer
from rocketkd.teachers.prior import Prior, PriorScorer, held_out_for_prior, prior_members
from rocketkd.types import CandidateList

cfg_path, prior_dir, out, n_queries, epochs = sys.argv[1], sys.argv[2], Path(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
extra = sys.argv[6:]
opts = dict(e.split("=", 1) for e in extra if "=" in e)
out.mkdir(parents=True, exist_ok=True)
cfg = load_config(cfg_path)
lr_body = float(opts.get("lr_body", cfg.train.lr_reranker))
lr_head = float(opts.get("lr_head", cfg.train.lr_reranker_head or lr_body))
G = cfg.candidates.list_length
B = int(opts.get("batch", cfg.train.batch_size))
torch.manual_seed(0)
random.seed(0)
t0 = time.time()
log = open(out / "log.txt", "a")


def say(*a):
    s = f"[{time.time() - t0:7.1f}s] " + " ".join(str(x) for x in a)
    print(s, flush=True)
    log.write(s + "\n")
    log.flush()


data = load_retrieval_data(cfg.data.path)
prior = Prior.load(prior_dir)
say("prior", prior.weights, prior.temperatures)

# ---- the inverse-cloze corpus: every passage loses one sentence; some of those sentences become queries
SENT = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9(\[])")
held = [content_words(t) for t in data.all_queries().values()]
index_words: dict = {}
for i, w in enumerate(held):
    for x in w:
        index_words.setdefault(x, []).append(i)
records, pseudo = [], []
ids, titles, texts = data.corpus.column("id"), data.corpus.column("title"), data.corpus.column("text")
KIND = opts.get("kind", "ict")
for pid, title, text in zip(ids, titles, texts):
    if KIND == "title":
        t = " ".join((title or "").split())
        if len(t.split()) >= 4 and text.strip() and not text.startswith(title):
            records.append({"_id": pid, "title": "", "text": text})
            if not near_held_out(t, held, index_words):
                pseudo.append((hashlib.sha1(("q" + pid).encode()).hexdigest(), pid, t))
        else:
            records.append({"_id": pid, "title": title, "text": text})
        continue
    sents = SENT.split(" ".join(text.split()))
    ok = [i for i, s in enumerate(sents) if 6 <= len(s.split()) <= 60]
    h = int(hashlib.sha1(pid.encode()).hexdigest(), 16)
    if len(sents) >= 3 and ok:
        i = ok[h % len(ok)]
        rest = " ".join(sents[:i] + sents[i + 1:])
        records.append({"_id": pid, "title": title, "text": rest})
        if not near_held_out(sents[i], held, index_words):
            pseudo.append((hashlib.sha1(("q" + pid).encode()).hexdigest(), pid, sents[i]))
    else:
        records.append({"_id": pid, "title": title, "text": text})
pseudo.sort()
pseudo = pseudo[:n_queries]
ict_corpus = Corpus.from_records(records, source="ict")
ict_queries = {"ict:" + pid: s for _, pid, s in pseudo}
FOLD_A = set()
if KIND in ("labels", "graded"):  # judged train queries of fold A (hash of the id), the original corpus
    tr = data.qrels[cfg.data.train_split]
    FOLD_A = {q for q in tr if q not in data.qrels[cfg.data.dev_split]
              and int(hashlib.sha1(q.encode()).hexdigest(), 16) % 2 == int(opts.get("fold", 0))}
    ict_corpus = data.corpus
    ict_queries, label_pairs = {}, []
    for q in sorted(FOLD_A):
        for p, gr in tr[q].items():
            if gr >= cfg.data.min_positive_grade:
                label_pairs.append((q, p))
                ict_queries[q] = data.queries[q]
say(f"ICT: {len(pseudo)} pseudo-queries, {len(ict_queries)} training queries")

base = load_retriever(cfg, cfg.model.retriever)
idx = DenseIndex.build(base, ict_corpus, batch_size=cfg.index.batch_size, autocast=cfg.index.autocast, show_progress=False)
run = search_run(idx, ict_queries, cfg.mining.depth + 1)
rng = random.Random(0)
lists, targets = [], []
heads = label_pairs if KIND in ("labels", "graded") else [(q, q[4:]) for q in run]
for qid, pos in heads:
    scores = run[qid]
    grades = data.qrels[cfg.data.train_split].get(qid, {}) if KIND in ("labels", "graded") else {pos: 1}
    ranked = [p for p, _ in sorted(scores.items(), key=lambda kv: -kv[1]) if p not in grades][: cfg.mining.depth]
    others = []
    if KIND == "graded":  # up to 3 more judged passages of any grade: the list also says which judged one is better
        others = rng.sample(sorted(p for p in grades if p != pos), min(3, len(grades) - 1))
    negs = rng.sample(ranked, G - 1 - len(others))
    lists.append(CandidateList(qid, [pos] + others + negs))
    gain = np.array([grades[pos]] + [grades[p] for p in others] + [0] * len(negs), dtype=np.float32)
    targets.append(gain / gain.sum())
pos_rank = [0]
say("base rank of the ICT positive: mean", np.mean(pos_rank), "top1", np.mean([r == 0 for r in pos_rank]))
ict_scorer = PriorScorer(prior, prior_members(prior, ict_corpus, shared={"base": RetrieverScorer(base)}))
prior_lp = ict_scorer.score(lists, ict_queries, ict_corpus)
say("prior top-1 on ICT lists", np.mean([int(np.argmax(v) == 0) for v in prior_lp]), "mean CE", -np.mean([v[0] for v in prior_lp]))

# ---- held-out judged queries (dev + train) on the original corpus
hq, hqrels = held_out_for_prior(cfg, data)
hq = {q: t for q, t in hq.items() if q not in FOLD_A}
hqrels = {q: r for q, r in hqrels.items() if q not in FOLD_A}
oidx = DenseIndex.build(base, data.corpus, batch_size=cfg.index.batch_size, autocast=cfg.index.autocast, show_progress=False)
hrun = search_run(oidx, hq, cfg.eval.rerank_depth)
groups = [(q, list(s)) for q, s in hrun.items()]
oscorer = PriorScorer(prior, prior_members(prior, data.corpus, shared={"base": RetrieverScorer(base)}))
hprior = oscorer.score_groups(groups, hq, data.corpus)
prior_run = {q: {p: float(v) for p, v in zip(pids, lp)} for (q, pids), lp in zip(groups, hprior)}
prior_eval = evaluate_run(prior_run, hqrels, ["ndcg_cut.10"])
base_eval = evaluate_run(hrun, hqrels, ["ndcg_cut.10"])
say(f"held-out {len(hq)} queries: base {base_eval.mean['ndcg_cut.10']:.4f} prior {prior_eval.mean['ndcg_cut.10']:.4f}")
pairs = [(hq[q], data.corpus.get_text(p)) for q, pids in groups for p in pids]


def evaluate(reranker, tag):
    g = reranker.predict(pairs, batch_size=64, autocast_dtype=torch.bfloat16)
    k = 0
    comp, alone, spreads = {}, {}, []
    for (q, pids), lp in zip(groups, hprior):
        gg = g[k : k + len(pids)]
        k += len(pids)
        comp[q] = {p: float(a + b) for p, a, b in zip(pids, lp, gg)}
        alone[q] = {p: float(b) for p, b in zip(pids, gg)}
        spreads.append(float(np.std(gg)))
    ce = evaluate_run(comp, hqrels, ["ndcg_cut.10"])
    ae = evaluate_run(alone, hqrels, ["ndcg_cut.10"])
    qs = sorted(ce.per_query)
    a = [prior_eval.per_query[q]["ndcg_cut.10"] for q in qs]
    b = [ce.per_query[q]["ndcg_cut.10"] for q in qs]
    p = paired_randomization_test(a, b)
    wins = sum(y > x for x, y in zip(a, b))
    losses = sum(y < x for x, y in zip(a, b))
    say(f"[{tag}] prior+g {ce.mean['ndcg_cut.10']:.4f} vs prior {prior_eval.mean['ndcg_cut.10']:.4f} "
        f"delta {np.mean(b) - np.mean(a):+.4f} p={p:.3f} W/L {wins}/{losses}; g alone {ae.mean['ndcg_cut.10']:.4f}; "
        f"g spread {np.mean(spreads):.3f} prior spread {np.mean([np.std(v) for v in hprior]):.3f}")
    return {"tag": tag, "delta": float(np.mean(b) - np.mean(a)), "p": p, "g_alone": ae.mean["ndcg_cut.10"],
            "g_std": float(np.mean(spreads))}


# ---- train prior + g on the ICT lists (listwise CE, positive at column 0)
reranker = load_reranker(cfg, opts.get("init", cfg.model.reranker), trainable=True)
reranker.train()
body_ids = {id(p) for p in reranker.model.base_model.parameters()}
groups_opt = [{"params": [p for p in reranker.parameters() if id(p) in body_ids], "lr": lr_body},
              {"params": [p for p in reranker.parameters() if id(p) not in body_ids], "lr": lr_head}]
opt = torch.optim.AdamW(groups_opt, weight_decay=0.01)
steps_per_epoch = math.ceil(len(lists) / B)
total = int(steps_per_epoch * epochs)
warm = max(1, int(0.1 * total))
sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min((s + 1) / warm, max(0.0, (total - s) / max(1, total - warm))))
say(f"training {total} steps of {B} lists (lr body {lr_body}, head {lr_head})")
order = []
results = []
step = 0
lossacc = []
while step < total:
    perm = list(range(len(lists)))
    rng.shuffle(perm)
    for s in range(0, len(perm) - B + 1, B):
        rows = perm[s : s + B]
        qs_, ps_ = [], []
        for r in rows:
            cl = lists[r]
            for p in cl.pids:
                qs_.append(ict_queries[cl.qid])
                ps_.append(ict_corpus.get_text(p))
        inputs = reranker.tokenize_pairs(qs_, ps_)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            g = reranker.score_groups(inputs, G)
        pr = torch.tensor(np.stack([prior_lp[r] for r in rows]), dtype=torch.float32)
        tgt = torch.tensor(np.stack([targets[r] for r in rows]))  # one-hot at column 0 unless kind=graded
        loss = -(tgt * torch.log_softmax(pr + g.float(), dim=-1)).sum(-1).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(reranker.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        step += 1
        lossacc.append(loss.item())
        if step % 10 == 0:
            say(f"step {step}/{total} loss {np.mean(lossacc[-10:]):.4f}")
        if "--eval-every-epoch" in extra and step % steps_per_epoch == 0 and step < total:
            results.append(evaluate(reranker, f"step {step}"))
            reranker.train()
        if step >= total:
            break
results.append(evaluate(reranker, f"step {step} (end)"))
reranker.save(out / "reranker")
json.dump(results, open(out / "results.json", "w"), indent=1)
say("done")
