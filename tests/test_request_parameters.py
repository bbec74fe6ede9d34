"""One parser and one set of bounds per request, whichever edge passes it: the API, the page and
the management command refuse the same bad value in the same words, naming the parameter
(`core.params`, `annotator.reports.ReportRequest`, `datasets.splits.SplitParameters`), and every
command that looks a study up names the one it cannot find (`Study.objects.named`)."""

from __future__ import annotations

import html
import json

import pytest
from django.core.management import CommandError, call_command
from django.test import Client

from annotator.models import Round, Study
from annotator.reports import MAX_BOOTSTRAP, ReportRequest
from core import params
from core.errors import DomainError, NotFoundError
from datasets import splits, versions
from datasets.models import Split
from mltasks.models import TrainingRun

from .conftest import client_for

pytestmark = pytest.mark.django_db


def _page_text(response) -> str:
    assert response.status_code == 200
    return html.unescape(response.content.decode())


# -- the shared checks ----------------------------------------------------------------------


@pytest.mark.parametrize(("value", "expected"), [(0, 0), ("7", 7), (" 12 ", 12), (10, 10), (5, 5)])
def test_a_whole_number_is_read_from_an_int_or_its_text(value, expected):
    assert params.whole_number(value, "n", 0, 12) == expected


@pytest.mark.parametrize("value", [-1, 13, "many", "1.5", 1.0, True, None, "1e3"])
def test_a_whole_number_out_of_bounds_or_of_another_type_is_refused_by_name(value):
    with pytest.raises(DomainError, match=r"^n must be a whole number from 0 to 12, not ") as e:
        params.whole_number(value, "n", 0, 12)
    assert e.value.field == "n" and e.value.body() == {"n": [str(e.value)]}


def test_seeds_have_one_set_of_bounds():
    assert params.seed(params.SEED_MAX) == 2**32 - 1
    with pytest.raises(DomainError, match="seed must be a whole number from 0 to 4294967295"):
        params.seed(2**32)


# -- a study by name -------------------------------------------------------------------------


def test_a_study_by_name_or_an_error_naming_it(study):
    assert Study.objects.named("munich") == study
    with pytest.raises(NotFoundError, match="No study named 'nope'") as caught:
        Study.objects.named("nope")
    assert caught.value.status_code == 404


@pytest.mark.parametrize(
    "arguments",
    [
        ["add_scans", "smear.tiff"],
        ["agreement_report"],
        ["classmap"],
        ["decision_report", "--group", "blast", "--threshold", "0.2", "--positive", "AML"],
        ["export_geojson", "--scan", "1", "--out", "{tmp}/out.geojson"],
        ["import_geojson", "{tmp}/in.geojson", "--scan", "1", "--user", "anna"],
        ["import_diagnoses", "{tmp}/in.geojson"],
        ["make_dataset", "--name", "aml"],
        ["make_split", "--dataset", "aml", "--strategy", "holdout"],
    ],
    ids=lambda arguments: arguments[0],
)
def test_every_command_names_the_study_it_cannot_find(study, tmp_path, arguments):
    (tmp_path / "in.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": []}))
    name, *rest = (part.replace("{tmp}", str(tmp_path)) for part in arguments)
    with pytest.raises(CommandError, match=r"^No study named 'nope'\."):
        call_command(name, *rest, "--study", "nope")


# -- the agreement report: API, page, command ------------------------------------------------


def test_the_report_request_reads_a_query_and_a_command_alike():
    query = {"a": "gold", "b": "r1", "collapse": "MYO, PMO", "bootstrap": "200", "seed": "3"}
    options = {"a": "gold", "b": "r1", "collapse": "MYO,PMO", "bootstrap": 200, "seed": 3}
    options |= {"level": "leaf", "format": "csv", "out": None, "verbosity": 1}
    asked = ReportRequest.parse(query)
    assert asked == ReportRequest.parse(options)
    assert asked == ReportRequest("gold", "r1", collapse=("MYO", "PMO"), bootstrap=200, seed=3)
    assert ReportRequest.parse({}) == ReportRequest()
    assert asked.query() == "a=gold&b=r1&collapse=MYO,PMO&bootstrap=200&seed=3"
    assert ReportRequest.parse(dict(pair.split("=") for pair in asked.query().split("&"))) == asked
    assert ReportRequest().query() == ""


@pytest.mark.parametrize(
    ("query", "field", "message"),
    [
        (
            {"bootstrap": "-1"},
            "bootstrap",
            f"bootstrap must be a whole number from 0 to {MAX_BOOTSTRAP}",
        ),
        ({"bootstrap": str(MAX_BOOTSTRAP + 1)}, "bootstrap", f"from 0 to {MAX_BOOTSTRAP}, not"),
        ({"bootstrap": "many"}, "bootstrap", "bootstrap must be a whole number"),
        ({"seed": "-1"}, "seed", "seed must be a whole number from 0 to 4294967295"),
        ({"seed": str(2**32)}, "seed", "seed must be a whole number from 0 to 4294967295"),
        ({"a": "gold"}, "b", "Give both a and b"),
        ({"level": "fifteen"}, "level", "Unknown level 'fifteen'"),
    ],
)
def test_api_page_and_command_refuse_the_same_report_request(
    study, coordinator, api_as, query, field, message
):
    response = api_as(coordinator).get(f"/api/v1/studies/{study.pk}/agreement/", query)
    assert response.status_code == 400
    (said,) = response.json()[field]
    assert message in said

    page = Client()
    page.force_login(coordinator)
    shown = _page_text(page.get("/studies/munich/agreement/", query))
    assert said in shown  # the refusal, beside the default report

    options = [f"--{key}={value}" for key, value in query.items()]
    with pytest.raises(CommandError) as refused:
        call_command("agreement_report", "--study", "munich", *options)
    assert str(refused.value) == said


def test_the_page_keeps_the_whole_request_in_its_links(study, coordinator):
    page = Client()
    page.force_login(coordinator)
    shown = _page_text(page.get("/studies/munich/agreement/", {"bootstrap": "50", "seed": "4"}))
    assert "?format=json&bootstrap=50&seed=4" in shown


# -- splits: the page's form, the API's serializer, make_split ---------------------------------


@pytest.fixture
def version(study, curated, data_scientist):
    made, _ = versions.make_dataset(study, "aml", data_scientist)
    return made


def _split_everywhere(version, data_scientist, **asked) -> tuple[str, str, str]:
    """Ask the API, the page and the command for one split; each one's refusal, in words."""
    body = {"dataset": version.pk, **asked}
    response = client_for(data_scientist).post("/api/v1/splits/", body, format="json")
    assert response.status_code == 400, response.json()
    (api_said,) = next(iter(response.json().values()))

    page = Client()
    page.force_login(data_scientist)
    form = {"action": "split", "dataset": version.pk, "seed": 0, "k": 5, **asked}
    form.pop("fractions", None)  # the page splits a holdout by the default fractions
    shown = _page_text(page.post("/studies/munich/datasets/", form))

    options = [f"--{key}={value}" for key, value in asked.items() if key != "fractions"]
    if "fractions" in asked:
        fractions = asked["fractions"]
        options.append("--fractions=" + ",".join(str(fractions[p]) for p in splits.HOLDOUT_PARTS))
    with pytest.raises(CommandError) as refused:
        call_command("make_split", "--dataset", "aml", *options)
    assert Split.objects.count() == 0
    return api_said, shown, str(refused.value)


@pytest.mark.parametrize(
    ("asked", "message"),
    [
        ({"k": 1}, "k must be a whole number from 2 to 1000, not 1."),
        ({"k": 1001}, "k must be a whole number from 2 to 1000, not 1001."),
        ({"k": 500}, "k=500 is more than the 280 cells of the data set."),
        ({"seed": 2**32}, "seed must be a whole number from 0 to 4294967295, not 4294967296."),
    ],
)
def test_api_page_and_command_refuse_the_same_folds(version, data_scientist, asked, message):
    api_said, shown, command_said = _split_everywhere(
        version, data_scientist, strategy="stratified-kfold", **asked
    )
    assert api_said == command_said == message
    assert message in shown


@pytest.mark.parametrize(
    ("fractions", "message"),
    [
        ({"train": 0.8, "validation": 0.2, "test": 0}, "train and test fractions must be above 0"),
        ({"train": 0, "validation": 0, "test": 1}, "train and test fractions must be above 0"),
        (
            {"train": 0.5, "validation": 0.1, "test": 1.5},
            "The test fraction must be a number from 0 to 1",
        ),
        ({"train": 0.9, "validation": 0.1, "test": 0.2}, "add up to 1"),
    ],
)
def test_api_and_command_refuse_the_same_fractions(version, data_scientist, fractions, message):
    body = {"dataset": version.pk, "strategy": "holdout", "fractions": fractions}
    response = client_for(data_scientist).post("/api/v1/splits/", body, format="json")
    assert response.status_code == 400
    (api_said,) = response.json()["fractions"]
    text = ",".join(str(fractions[part]) for part in splits.HOLDOUT_PARTS)
    with pytest.raises(CommandError) as refused:
        call_command("make_split", "--dataset", "aml", "--strategy", "holdout", "--fractions", text)
    assert message in api_said and str(refused.value) == api_said
    assert Split.objects.count() == 0


def test_a_fraction_that_is_no_number_is_refused(version, data_scientist):
    with pytest.raises(
        CommandError, match="The train fraction must be a number from 0 to 1, not nan"
    ):
        call_command(
            "make_split", "--dataset", "aml", "--strategy", "holdout", "--fractions", "nan,0.5,0.5"
        )
    with pytest.raises(DomainError, match="validation fraction must be a number") as caught:
        splits.SplitParameters("holdout", fractions={"train": 0.5, "validation": float("inf")})
    assert caught.value.field == "fractions"
    response = client_for(data_scientist).generic(
        "POST",
        "/api/v1/splits/",
        f'{{"dataset": {version.pk}, "strategy": "holdout", "fractions": {{"train": NaN}}}}',
        content_type="application/json",
    )
    assert response.status_code == 400
    assert Split.objects.count() == 0


def test_split_parameters_keep_the_hash_of_the_defaults(version, data_scientist):
    asked = splits.SplitParameters("holdout")
    assert asked.holdout_fractions == {"train": 0.7, "validation": 0.1, "test": 0.2}
    made, _ = splits.make_split(version, "holdout", data_scientist)
    again, created = splits.make_split(
        version, "holdout", data_scientist, fractions={"train": 0.7, "validation": 0.1, "test": 0.2}
    )
    assert again.pk == made.pk and not created
    assert made.params == {"fractions": asked.holdout_fractions, "grouped": False}


# -- other parameters with one home ------------------------------------------------------------


def test_api_page_and_command_refuse_the_same_threshold(study, curated, data_scientist):
    message = "threshold must be a whole number from 0 to 1000000000, not -1."
    response = client_for(data_scientist).get(
        "/api/v1/classmaps/propose/", {"study": "munich", "threshold": -1}
    )
    assert response.status_code == 400 and response.json() == {"threshold": [message]}
    page = Client()
    page.force_login(data_scientist)
    assert message in _page_text(page.get("/studies/munich/datasets/", {"threshold": -1}))
    with pytest.raises(CommandError, match=message):
        call_command("classmap", "--study", "munich", "--threshold", "-1")
    too_many = client_for(data_scientist).get(
        "/api/v1/classmaps/propose/", {"study": "munich", "threshold": 10**9 + 1}
    )
    assert too_many.status_code == 400 and "from 0 to 1000000000" in str(too_many.json())


def _api_and_page_make_the_same_round(api_as, coordinator, body, made, field, message):
    """The API and the rounds page both make the blinded round, or both refuse it in words."""
    response = api_as(coordinator).post("/api/v1/rounds/", body, format="json")
    assert (response.status_code == 201) is made, response.json()
    if not made:
        assert response.json() == {field: [message]}
    Round.objects.filter(kind=Round.Kind.BLINDED).delete()

    page = Client()
    page.force_login(coordinator)
    shown = _page_text(
        page.post("/studies/munich/rounds/", {"action": "create", **body}, follow=True)
    )
    assert Round.objects.filter(kind=Round.Kind.BLINDED).exists() is made
    if not made:
        assert message in shown


@pytest.mark.parametrize(("fraction", "made"), [(0, False), (1, True), (0.00001, True)])
def test_api_and_page_take_the_same_round_fraction(
    study, gold_cells, rater, coordinator, api_as, fraction, made
):
    body = {"study": "munich", "rater": "rita", "mode": "fraction", "fraction": fraction}
    message = "fraction must be a number in (0, 1]."
    _api_and_page_make_the_same_round(api_as, coordinator, body, made, "fraction", message)


@pytest.mark.parametrize(("seed", "made"), [(-1, False), (2**62 + 1, False), (2**62, True)])
def test_api_and_page_take_the_same_round_seed(
    study, gold_cells, rater, coordinator, api_as, seed, made
):
    body = {"study": "munich", "rater": "rita", "mode": "all", "seed": seed}
    message = f"seed must be a whole number from 0 to {2**62}, not {seed}."
    _api_and_page_make_the_same_round(api_as, coordinator, body, made, "seed", message)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("image_size", 5000, "image_size must be a whole number from 32 to 4096, not 5000."),
        ("image_size", 16, "image_size must be a whole number from 32 to 4096, not 16."),
        ("seed", 2**32, "seed must be a whole number from 0 to 4294967295, not 4294967296."),
    ],
)
def test_api_page_and_command_refuse_the_same_training_config(
    split, data_scientist, key, value, message
):
    body = {"split": split.pk, "config": {key: value}}
    response = client_for(data_scientist).post("/api/v1/training-runs/", body, format="json")
    assert response.status_code == 400 and response.json() == {key: [message]}
    page = Client()
    page.force_login(data_scientist)
    form = {"split": split.pk, "image_size": 32, "max_epochs": 1, "oversample_to": 4}
    form |= {"batch_size": 8, "seed": 0, key: value}
    assert message in _page_text(page.post("/studies/munich/training/", form))
    with pytest.raises(CommandError) as refused:
        call_command("train", "--split", str(split.pk), "--set", f"{key}={value}")
    assert str(refused.value) == message
    assert not TrainingRun.objects.exists()
