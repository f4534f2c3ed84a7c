"""Candidate lists for a lone ``rocketkd train``: from ``candidates.path``, mined, or sampled from the qrels."""

from __future__ import annotations

import copy
import logging
from pathlib import Path

from rocketkd.candidates.mining import mine
from rocketkd.candidates.negatives import label_lists
from rocketkd.config import Config
from rocketkd.data.formats import read_candidates
from rocketkd.distributed import barrier, is_main
from rocketkd.errors import ConfigError
from rocketkd.stamps import make_stamp, reusable, write_stamp
from rocketkd.types import CandidateList

logger = logging.getLogger(__name__)

# the config sections mined lists depend on (their stamp; a change to any key of these mines them again)
CANDIDATE_KEYS = ("data", "model", "mining", "candidates", "index")


def build_lists(cfg: Config, data, output_dir: str | Path | None = None) -> list[CandidateList]:
    """Candidate lists from ``candidates.path`` (mined), else per ``candidates.source``.

    ``sampled``: qrels positives + random corpus negatives (easy negatives, no model needed). ``mined``: the top
    ``mining.depth`` of ``mining.first_round`` (BM25 or the base encoder) as ``rocketkd mine`` builds them, written
    to ``<output_dir>/candidates.jsonl``, reused only while its stamp (the data, model, mining, candidates and index
    keys, and the corpus) matches (:mod:`rocketkd.stamps`); else mined again.
    """
    queries = data.all_queries()
    if cfg.candidates.path:
        return read_candidates(cfg.candidates.path, corpus=data.corpus, queries=queries)
    split = cfg.data.train_split
    if split not in data.qrels:
        raise ConfigError(
            f"config key 'data.train_split': no qrels split {split!r} (loaded: {', '.join(data.qrels) or 'none'})"
        )
    if cfg.candidates.source == "mined":
        path = Path(output_dir or cfg.output_dir) / "candidates.jsonl"
        stamp = make_stamp(cfg, CANDIDATE_KEYS, corpus=data.corpus.fingerprint())
        reuse = reusable(path, stamp, "candidate lists")
        barrier()  # every process has decided before the main process rewrites the file
        if not reuse:
            mcfg = cfg
            if cfg.candidates.mined_by and cfg.candidates.mined_by != cfg.mining.first_round:
                mcfg = copy.deepcopy(cfg)
                mcfg.mining.first_round = cfg.candidates.mined_by
            logger.info("building candidate lists: top %d of %s per training query", cfg.mining.depth,
                        mcfg.mining.first_round)
            mine(mcfg, output=path, data=data)
            if is_main():
                write_stamp(path, stamp)
        barrier()
        return read_candidates(path, corpus=data.corpus, queries=queries)
    qrels = data.qrels[split]
    return label_lists(
        qrels,
        data.corpus.ids,
        list_length=cfg.candidates.list_length,
        seed=cfg.candidates.seed,
        min_grade=cfg.data.min_positive_grade,
    )
