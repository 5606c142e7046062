"""A principal's subject follows one rule for claiming and deciding a task (the wire's rule for ids: 1 to 200
bytes of UTF-8, no control characters, not starting with `~`): a subject that may not claim may not decide
either, even as an admin, and the task stays open."""

from __future__ import annotations

from urllib.parse import quote

import pytest

from conftest import ODD_SUBJECTS

TASK = quote("loan-7/credit_manager_approval/1", safe="")


@pytest.mark.parametrize("subject", ODD_SUBJECTS, ids=["tilde", "over-200-bytes"])
def test_a_subject_that_may_not_claim_may_not_decide(baton, subject: str) -> None:
    token = baton.odd_tokens[subject]
    me = baton.api("GET", "/v1/me", token=token)
    assert me.status_code == 200 and me.json()["subject"] == subject, me.text

    for path, body in ((f"/v1/tasks/{TASK}/claim", None), (f"/v1/tasks/{TASK}/decision", {"approved": True, "comment": "as an odd subject"})):
        answer = baton.api("POST", path, token=token, json=body)
        assert answer.status_code == 403, f"POST {path} as {subject!r}: {answer.status_code} {answer.text}"
        assert answer.headers["Content-Type"].startswith("application/problem+json")
        assert "subject" in answer.json()["detail"], answer.text

    task = baton.api("GET", f"/v1/tasks/{TASK}").json()
    assert task["status"] == "open" and "claimed_by" not in task, task
