"""Task snapshots hand out the ledger's histograms without copying them (copy on write):
a snapshot must never see a change made after it was taken."""

from __future__ import annotations

from celery_stalk.model import Model, ModelSettings

from tests import events as ev


def test_a_snapshot_keeps_its_values_while_the_model_goes_on():
    model = Model(ModelSettings())
    model.apply_many(ev.lifecycle("a", "app.add", "work", runtime=0.5), 1000.0)
    before = model.task_snapshot()
    hist = before.runtime[("app.add", "work")]
    counts, total = list(hist.counts), hist.total

    model.apply_many(ev.lifecycle("b", "app.add", "work", runtime=2.0), 1001.0)
    model.apply_many(ev.lifecycle("c", "app.add", "work", runtime=3.0), 1002.0)
    after = model.task_snapshot()

    assert (list(hist.counts), hist.total) == (counts, total)  # untouched
    assert sum(hist.counts) == 1
    changed = after.runtime[("app.add", "work")]
    assert changed is not hist and sum(changed.counts) == 3 and changed.total == 5.5
    # a series nothing happened to since the last snapshot is the same object: the
    # renderer knows it unchanged without looking at its values
    model.apply_many(ev.lifecycle("d", "app.other", "work", runtime=1.0), 1003.0)
    last = model.task_snapshot()
    assert last.runtime[("app.add", "work")] is changed
    assert last.wait[("app.add", "work")] is after.wait[("app.add", "work")]
