"""Panels through the API: a coordinator makes a panel and watches each rater's progress,
opens an adjudication over the disputed cells, the adjudicator records the consensus with a
note, and the majority vote is read with its tie rule. Panel raters and outsiders learn
nothing of any of it."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from annotator import panels
from annotator.models import Label, Membership, Panel, Round

from .conftest import client_for
from .factories import UserFactory

PANELS = "/api/v1/panels/"
ADJUDICATIONS = "/api/v1/adjudications/"


def _make(coordinator, **changes):
    body = {
        "study": "munich",
        "raters": ["pia", "quinn", "ruth"],
        "mode": "per-class",
        "per_class": 2,
        "seed": 7,
        "name": "trio-api",
        **changes,
    }
    return client_for(coordinator).post(PANELS, body, format="json")


def test_a_coordinator_makes_a_panel_and_sees_each_raters_progress(
    study, curated, coordinator, panel_raters
):
    later = timezone.now() + timedelta(days=30)
    response = _make(coordinator, repeat_not_before=later.isoformat())
    assert response.status_code == 201, response.json()
    body = response.json()
    panel = Panel.objects.get(pk=body["id"])
    assert body["name"] == "trio-api" and body["reference"] == curated.name
    assert body["design"]["raters"] == ["pia", "quinn", "ruth"]
    first = [r for r in body["rounds"] if r["kind"] == "blinded"]
    repeats = [r for r in body["rounds"] if r["kind"] == "repeat"]
    assert [r["rater"] for r in first] == ["pia", "quinn", "ruth"]
    assert all(r["done"] == 0 and r["total"] == 16 and r["status"] == "open" for r in first)
    assert [r["status"] for r in repeats] == ["waiting"] * 3
    assert {r["repeats"] for r in repeats} == {r["name"] for r in first}
    assert panel.rounds.count() == 6 and body["adjudications"] == []

    round_ = Round.objects.get(pk=first[0]["id"])
    item = round_.items.order_by("position").first()
    from annotator.annotation import set_label

    set_label(item.cell, round_, round_.rater, node="NGS")
    listed = client_for(coordinator).get(PANELS, {"study": "munich"}).json()["results"]
    assert [p["name"] for p in listed] == ["trio-api"]
    assert [r["done"] for r in listed[0]["rounds"][:3]] == [1, 0, 0]
    detail = client_for(coordinator).get(f"{PANELS}{panel.pk}/").json()
    assert detail["rounds"][0]["done"] == 1


@pytest.mark.parametrize(
    ("changes", "field", "words"),
    [
        ({"raters": ["pia"]}, "raters", "2 to 50 raters"),
        ({"raters": ["pia", "pia"]}, "raters", "pia given twice"),
        ({"raters": ["pia", "nobody"]}, "raters", "named nobody"),
        ({"raters": "pia"}, "raters", "list"),
        ({"raters": ["pia", "cora"]}, "rater", "sees every label"),
        ({"mode": "loudest"}, "mode", "not a valid choice"),
        ({"mode": "fraction", "fraction": 3}, "fraction", ""),
        ({"per_class": 0}, "per_class", ""),
        ({"name": "two words"}, "name", ""),
        ({"reference": "no-such-round"}, "reference", "No gold round"),
        ({"repeat_not_before": "soon"}, "repeat_not_before", "format"),
        ({"study": "nowhere"}, "study", ""),
    ],
)
def test_a_bad_panel_is_refused_naming_the_field(
    study, curated, coordinator, panel_raters, changes, field, words
):
    response = _make(coordinator, **changes)
    assert response.status_code == 400, response.json()
    body = response.json()
    assert field in body, body
    assert words in " ".join(body[field])
    assert not Panel.objects.exists() and not Round.objects.exclude(kind="gold").exists()


def test_the_same_name_twice_is_refused(study, curated, coordinator, panel_raters):
    assert _make(coordinator).status_code == 201
    again = _make(coordinator, seed=8)
    assert again.status_code == 400 and "named 'trio-api' already" in again.json()["name"][0]


def test_adjudication_through_the_api(study, answered_panel, coordinator, curated):
    client = client_for(coordinator)
    opened = client.post(
        f"{PANELS}{answered_panel.pk}/adjudications/",
        {"adjudicator": "cora", "rule": "any", "name": "settle-trio"},
        format="json",
    )
    assert opened.status_code == 201, opened.json()
    adjudication = opened.json()
    assert adjudication["name"] == "settle-trio" and adjudication["total"] == 2
    assert (adjudication["adjudicator"], adjudication["rule"]) == ("cora", "any")

    items = client.get(f"{ADJUDICATIONS}{adjudication['id']}/items/").json()
    table = panels.panel_table(answered_panel)
    first, second = table.cells[:2]
    assert {item["cell"] for item in items} == {first, second}
    gold = panels.round_answers(curated)
    by_cell = {item["cell"]: item for item in items}
    assert set(by_cell[first]["answers"]) == {"pia", "quinn", "ruth"}
    assert by_cell[first]["answers"]["pia"] == gold[first]
    assert by_cell[first]["reference"] == gold[first]
    assert by_cell[first]["vote"]["winner"] is None
    assert by_cell[second]["vote"]["winner"] == gold[second]
    assert by_cell[second]["vote"]["votes"] == 2
    assert by_cell[first]["consensus"] is None
    assert by_cell[first]["patch"] == f"/api/v1/cells/{first}/patch.png"
    assert by_cell[first]["scan"] is None and by_cell[first]["x"] is None
    assert [item["position"] for item in items] == [1, 2]

    url = f"{ADJUDICATIONS}{adjudication['id']}/items/{first}/"
    saved = client.put(url, {"node": "PMOA", "note": "granules at high zoom"}, format="json")
    assert saved.status_code == 200, saved.json()
    assert saved.json()["consensus"] == {
        "node": "PMOA",
        "cannot_classify": False,
        "note": "granules at high zoom",
        "version": 1,
    }
    label = Label.objects.get(round_id=adjudication["id"], cell_id=first)
    assert (label.node.code, label.note) == ("PMOA", "granules at high zoom")
    stale = client.put(url, {"node": "NGS", "version": 5}, format="json")
    assert stale.status_code == 409
    changed = client.put(url, {"node": "NGS", "note": "on review", "version": 1}, format="json")
    assert changed.json()["consensus"]["version"] == 2
    summary = client.get(f"{ADJUDICATIONS}{adjudication['id']}/").json()
    assert (summary["done"], summary["total"]) == (1, 2)
    panel = client.get(f"{PANELS}{answered_panel.pk}/").json()
    assert [a["name"] for a in panel["adjudications"]] == ["settle-trio"]
    listed = client.get(ADJUDICATIONS, {"panel": "trio"}).json()["results"]
    assert [a["id"] for a in listed] == [adjudication["id"]]


@pytest.mark.parametrize(
    ("body", "field", "words"),
    [
        ({"adjudicator": "pia"}, "adjudicator", "overseeing role"),
        ({"adjudicator": "nobody"}, "adjudicator", "does not exist"),
        ({"adjudicator": "cora", "rule": "loudest"}, "rule", "not a valid choice"),
        ({"adjudicator": "cora", "rule": "below-share"}, "share", "needs a share"),
        ({"adjudicator": "cora", "rule": "below-share", "share": 2}, "share", ""),
        ({}, "adjudicator", "required"),
    ],
)
def test_a_bad_adjudication_is_refused_naming_the_field(
    answered_panel, coordinator, body, field, words
):
    response = client_for(coordinator).post(
        f"{PANELS}{answered_panel.pk}/adjudications/", body, format="json"
    )
    assert response.status_code == 400, response.json()
    assert field in response.json() and words in " ".join(response.json()[field])
    assert not Round.objects.filter(kind=Round.Kind.ADJUDICATION).exists()


def test_bad_consensus_answers_name_the_problem(answered_panel, coordinator, data_scientist):
    adjudication = panels.open_adjudication(answered_panel, coordinator, coordinator)
    cell = adjudication.items.first().cell_id
    base = f"{ADJUDICATIONS}{adjudication.pk}/items/"
    client = client_for(coordinator)
    cases = [
        (f"{base}{cell}/", {"node": "NOPE"}, 400, "NOPE"),
        (f"{base}{cell}/", {}, 400, "node"),
        (f"{base}{cell}/", {"node": "NGS", "note": "x" * 2001}, 400, "note"),
        (f"{base}999999999/", {"node": "NGS"}, 404, "not in adjudication round"),
        (f"{base}999999999999999999/", {"node": "NGS"}, 404, "not in adjudication round"),
    ]
    for url, body, code, words in cases:
        response = client.put(url, body, format="json")
        assert response.status_code == code, (url, body, response.json())
        assert words in str(response.json()), response.json()
    Membership.objects.create(
        study=answered_panel.study, user=data_scientist, role=Membership.Role.COORDINATOR
    )
    other = client_for(data_scientist).put(f"{base}{cell}/", {"node": "NGS"}, format="json")
    assert other.status_code == 400 and "another adjudicator" in str(other.json())
    assert not Label.objects.filter(round=adjudication).exists()


def test_the_majority_vote_states_its_tie_rule(answered_panel, coordinator, curated):
    client = client_for(coordinator)
    body = client.get(f"{PANELS}{answered_panel.pk}/votes/").json()
    assert body["tie_rule"] == panels.TIE_RULE and body["with_reference"] is False
    assert body["raters"] == ["pia", "quinn", "ruth"]
    table = panels.panel_table(answered_panel)
    rows = {row["cell"]: row for row in body["cells"]}
    assert list(rows) == table.cells
    gold = panels.round_answers(curated)
    first, second, last = table.cells[0], table.cells[1], table.cells[-1]
    assert rows[first]["vote"]["winner"] is None  # three different answers: a tie
    assert rows[second]["vote"] == {
        "winner": gold[second],
        "votes": 2,
        "answered": 3,
        "declined": 0,
        "share": pytest.approx(2 / 3),
    }
    assert rows[last]["answers"]["ruth"] == "UNC" and rows[last]["vote"]["declined"] == 1
    counted = client.get(f"{PANELS}{answered_panel.pk}/votes/", {"with_reference": "true"}).json()
    assert {row["cell"]: row for row in counted["cells"]}[first]["vote"]["winner"] == gold[first]
    bad = client.get(f"{PANELS}{answered_panel.pk}/votes/", {"with_reference": "maybe"})
    assert bad.status_code == 400 and "with_reference" in bad.json()


def test_panel_raters_and_outsiders_learn_nothing(
    answered_panel, coordinator, panel_raters, outsider, annotator, data_scientist
):
    adjudication = panels.open_adjudication(answered_panel, coordinator, coordinator)
    cell = adjudication.items.first().cell_id
    # A rater who is later made coordinator of the study still sees nothing of the panel.
    promoted = panel_raters[2]
    Membership.objects.create(
        study=answered_panel.study, user=promoted, role=Membership.Role.COORDINATOR
    )
    stranger = UserFactory(username="stan")
    urls = [
        f"{PANELS}{answered_panel.pk}/",
        f"{PANELS}{answered_panel.pk}/votes/",
        f"{ADJUDICATIONS}{adjudication.pk}/",
        f"{ADJUDICATIONS}{adjudication.pk}/items/",
    ]
    for user in [*panel_raters, outsider, annotator, stranger]:
        client = client_for(user)
        for url in urls:
            response = client.get(url)
            assert response.status_code == 404, (user, url)
            assert "trio" not in response.content.decode()
        assert client.get(PANELS).json()["results"] == []
        assert client.get(ADJUDICATIONS).json()["results"] == []
        writes = [
            client.put(f"{ADJUDICATIONS}{adjudication.pk}/items/{cell}/", {"node": "NGS"}),
            client.post(f"{PANELS}{answered_panel.pk}/adjudications/", {"adjudicator": "cora"}),
        ]
        assert all(w.status_code == 404 for w in writes), user
        made = _make(user, name="sneaky")
        assert made.status_code in (400, 403), made.json()
        assert "trio" not in made.content.decode()
    assert client_for(panel_raters[0]).post(PANELS, {}, format="json").status_code == 400
    # A data scientist oversees: she reads the panel and its votes, but only coordinators
    # and admins open adjudications, and only the adjudicator records the consensus.
    client = client_for(data_scientist)
    assert client.get(f"{PANELS}{answered_panel.pk}/votes/").status_code == 200
    refused = client.post(
        f"{PANELS}{answered_panel.pk}/adjudications/", {"adjudicator": "dora"}, format="json"
    )
    assert refused.status_code == 403 and "open adjudication" in refused.json()["detail"]
    assert client.get(f"{ADJUDICATIONS}{adjudication.pk}/items/").status_code == 403
    assert Panel.objects.count() == 1
    assert Round.objects.filter(kind=Round.Kind.ADJUDICATION).count() == 1


def test_the_rounds_page_makes_panels_and_opens_adjudications(
    client, study, answered_panel, coordinator, panel_raters
):
    client.force_login(coordinator)
    page = client.get("/studies/munich/rounds/")
    text = page.content.decode()
    assert 'data-panel="trio"' in text and "Open adjudication" in text
    for name in ("pia", "quinn", "ruth"):
        assert f'value="{name}"' in text
    one = client.post(
        "/studies/munich/rounds/",
        {"action": "panel", "panel-raters": ["pia"], "panel-mode": "all"},
        follow=True,
    )
    assert "2 to 50 raters" in one.content.decode()
    bad_rule = client.post(
        "/studies/munich/rounds/",
        {"action": "adjudicate", "panel": answered_panel.pk, "adjudicator": "cora", "rule": "x"},
    )
    assert bad_rule.status_code == 200 and "Select a valid choice" in bad_rule.content.decode()
    no_share = client.post(
        "/studies/munich/rounds/",
        {
            "action": "adjudicate",
            "panel": answered_panel.pk,
            "adjudicator": "cora",
            "rule": "below-share",
        },
        follow=True,
    )
    assert "needs a share" in no_share.content.decode()
    made = client.post(
        "/studies/munich/rounds/",
        {"action": "adjudicate", "panel": answered_panel.pk, "adjudicator": "cora", "rule": "any"},
        follow=True,
    )
    assert "opened: 2 cells" in made.content.decode()
    assert Round.objects.filter(kind=Round.Kind.ADJUDICATION).count() == 1


def test_the_adjudication_page_records_a_consensus_and_refuses_others(
    client, answered_panel, coordinator, data_scientist, panel_raters, outsider
):
    adjudication = panels.open_adjudication(answered_panel, coordinator, coordinator)
    url = f"/adjudications/{adjudication.pk}/"
    client.force_login(coordinator)
    page = client.get(url).content.decode()
    assert 'data-rater="pia"' in page and 'name="answer"' in page
    first = adjudication.items.get(position=1).cell_id
    assert f"/api/v1/cells/{first}/patch.png" in page
    empty = client.post(url, {"position": 1, "answer": ""}, follow=True)
    assert "Give a node code" in empty.content.decode()
    saved = client.post(url, {"position": 1, "answer": "EBO", "note": "why"})
    assert saved.status_code == 302 and saved["Location"].endswith("?position=2")
    label = Label.objects.get(round=adjudication, cell_id=first)
    assert (label.node.code, label.note) == ("EBO", "why")
    stale = client.post(url, {"position": 1, "answer": "NGS", "version": "7"}, follow=True)
    assert "changed by someone else" in stale.content.decode()
    assert Label.objects.get(pk=label.pk).node.code == "EBO"
    nowhere = client.post(url, {"position": 99, "answer": "NGS"}, follow=True)
    assert "No such cell in this adjudication round" in nowhere.content.decode()
    odd = client.post(url, {"position": "²", "answer": "NGS", "version": "²"}, follow=True)
    assert odd.status_code == 200
    declined = client.post(url, {"position": 2, "answer": "UNC", "note": ""}, follow=True)
    assert "Every disputed cell has a consensus" in declined.content.decode()
    second = adjudication.items.get(position=2).cell_id
    assert Label.objects.get(round=adjudication, cell_id=second).cannot_classify
    for user in (*panel_raters, outsider):
        client.force_login(user)
        assert client.get(url).status_code == 404
        assert client.post(url, {"position": 1, "answer": "NGS"}).status_code == 404
    client.force_login(data_scientist)
    assert client.get(url).status_code == 403
    assert Label.objects.get(pk=label.pk).node.code == "EBO"


def test_an_imported_panel_is_listed_voted_on_and_adjudicated(client, study, coordinator):
    from annotator.rating_import import import_ratings

    rows = ["item,rater,label", "c1,r1,NGS", "c1,r2,NGS", "c1,r3,LYT", "c2,r1,MON", "c2,r2,MON"]
    rows += ["c2,r3,MON"]
    import_ratings("\n".join(rows) + "\n", "munich")
    panel = Panel.objects.get(study=study)
    api = client_for(coordinator)
    body = api.get(f"{PANELS}{panel.pk}/").json()
    assert body["reference"] is None and [r["rater"] for r in body["rounds"]] == ["r1", "r2", "r3"]
    votes = api.get(f"{PANELS}{panel.pk}/votes/").json()["cells"]
    assert sorted(row["vote"]["winner"] for row in votes) == ["MON", "NGS"]
    opened = api.post(
        f"{PANELS}{panel.pk}/adjudications/", {"adjudicator": "cora"}, format="json"
    ).json()
    assert opened["total"] == 1
    client.force_login(coordinator)
    page = client.get("/studies/munich/rounds/").content.decode()
    assert f'data-panel="{panel.name}"' in page and "imported from" in page
    assert client.get(f"/adjudications/{opened['id']}/").status_code == 200
