"""Schema errors, cleaning and the feature encoder."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from clm_torch.data.cleaning import clean_table
from clm_torch.data.datamodules import IndexBatchSampler, TableDataModule, stratified_split, table_from_file
from clm_torch.data.encoding import FeatureEncoder
from clm_torch.data.schema import SchemaError, TableSchema, infer_schema, read_table, validate_frame, validate_target
from clm_torch.data.sources import FrameSource
from tests.conftest import messy_table


# ----------------------------------------------------------------------------- schema errors
def test_missing_file_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(SchemaError, match=r"nope\.csv.*not found"):
        read_table(tmp_path / "nope.csv")


def test_empty_file(tmp_path: Path) -> None:
    p = tmp_path / "empty.csv"
    p.write_text("")
    with pytest.raises(SchemaError, match=r"empty\.csv.*empty"):
        read_table(p)
    p.write_text("a,b\n")
    with pytest.raises(SchemaError, match="no rows"):
        read_table(p)


def test_unreadable_file(tmp_path: Path) -> None:
    p = tmp_path / "latin.csv"
    p.write_bytes("name,city\nJosé,Köln\n".encode("latin-1"))
    with pytest.raises(SchemaError, match=r"latin\.csv, column 'name': file is not valid UTF-8 \(line 2, byte 0xe9 "
                                          r"at offset 13\)"):
        read_table(p)
    p.write_bytes(b"id,city\n" + b"C1,Bonn\n" * 50_000 + "C2,Köln\n".encode("latin-1"))  # past pandas' first chunk
    with pytest.raises(SchemaError, match=r"column 'city': file is not valid UTF-8 \(line 50002, byte 0xf6 at offset "
                                          r"400012\)"):
        read_table(p)
    q = tmp_path / "broken.parquet"
    q.write_bytes(b"not a parquet file at all")
    with pytest.raises(SchemaError, match=r"broken\.parquet.*cannot read"):
        read_table(q)


def test_files_that_pandas_would_misread_are_named_errors(tmp_path: Path) -> None:
    """A spreadsheet or archive under a .csv name, a repeated header column, another delimiter: each
    is a SchemaError naming the file (and the column), not a silent misread or a decoding traceback."""
    import io
    import zipfile

    def error(name: str, data: bytes) -> str:
        p = tmp_path / name
        p.write_bytes(data)
        with pytest.raises(SchemaError) as err:
            read_table(p)
        assert str(err.value).startswith(str(p)), str(err.value)
        return str(err.value)

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("xl/workbook.xml", "<workbook/>")
    assert "ZIP archive (an Excel .xlsx workbook" in error("export.csv", buf.getvalue())
    assert "Excel .xls workbook" in error("old.csv", b"\xd0\xcf\x11\xe0" + bytes(60))
    assert "Parquet file" in error("data.csv", b"PAR1" + bytes(60))
    assert "gzip-compressed" in error("log.csv", __import__("gzip").compress(b"a,b\n1,2\n"))
    dup = error("dup.csv", b"id,tenure,plan,tenure\n1,2,a,3\n")
    assert "column 'tenure': the header names this column twice (columns 2 and 4)" in dup
    assert "separated by ';'" in error("semi.csv", b"id;tenure;plan\n1;2;a\n")
    assert "give it a .tsv name" in error("tabs.csv", b"id\ttenure\n1\t2\n")
    assert "give it a .csv name" in error("commas.tsv", b"id,tenure\n1,2\n")
    assert "cannot read a .json file: clm_torch reads CSV (.csv, .csv.gz, .tsv) and Parquet (.parquet) files; " \
           "convert it, e.g. pd.read_json(path).to_parquet('table.parquet')" in error("cust.json", b'{"id": 1}')
    assert "cannot read a .xlsx file" in error("cust.xlsx", b"id,plan\n1,a\n")



def test_excel_export_with_semicolons_and_decimal_commas(tmp_path: Path) -> None:
    """A German Excel "CSV" (UTF-8 BOM, ';' between fields, 1.234,50 for 1234.5) used to stop with pandas'
    tokenizer error ('Expected 2 fields in line 3, saw 3', the decimal comma read as a separator), which
    named neither ';' nor a way to read it. It is named now, and data.csv reads it: numbers in the
    dialect become numbers, a date such as 06.09.2023 stays text (pandas' own thousands='.' reads it
    as 6092023), ids keep their zeros, missing tokens are missing."""
    p = tmp_path / "kunden.csv"
    p.write_bytes("kunde;saldo;seit;alter\n0001;1.234,50;06.09.2023;41\n0002;-7,5;07.09.2023;?\n"
                  "0003;12.345.678,9;08.09.2023;33,5\n".encode("utf-8-sig"))
    with pytest.raises(SchemaError) as err:
        read_table(p)
    assert f"{p}: the header is one column, 'kunde;saldo;seit;alter': the file looks separated by ';'; read it " \
           "with data.csv.sep=';' (with decimal commas such as 1.234,50 also data.csv.decimal=','" in str(err.value)
    df = read_table(p, text_columns=["kunde"], csv={"sep": ";", "decimal": ",", "thousands": "."})
    assert df["kunde"].tolist() == ["0001", "0002", "0003"]
    assert df["saldo"].tolist() == [1234.5, -7.5, 12345678.9] and df["saldo"].dtype == np.float64
    assert df["seit"].tolist() == ["06.09.2023", "07.09.2023", "08.09.2023"]
    assert df["alter"].iloc[[0, 2]].tolist() == [41.0, 33.5] and np.isnan(df["alter"].iloc[1])
    # without a thousands separator 1.234,50 is no number: the column stays text (and is warned about)
    assert read_table(p, csv={"sep": ";", "decimal": ","})["saldo"].iloc[0] == "1.234,50"
    for bad, what in (({"sep": ",", "decimal": ","}, "data.csv.sep and data.csv.decimal are both ','"),
                      ({"decimal": ","}, "data.csv.sep and data.csv.decimal are both ','"),
                      ({"decimal": ";"}, "data.csv.decimal=';': expected '.' or ','"),
                      ({"sep": "ab"}, "data.csv.sep='ab': expected one character"),
                      ({"seperator": ";"}, "data.csv has no key 'seperator'")):
        with pytest.raises(SchemaError, match=what):
            read_table(p, csv=bad)
    # one check per read, the settings check's: the defaults resolved for the file, before it is opened
    from clm_torch.data.schema import csv_options

    assert csv_options({"decimal": ","}, path="k.tsv.gz") == {"sep": "\t", "decimal": ",", "thousands": None}
    with pytest.raises(SchemaError, match="data.csv.sep and data.csv.decimal are both ','"):
        read_table(tmp_path / "not_there.csv", csv={"decimal": ","})
    # the event log reads its money column in the same dialect
    from clm_torch.data.events import load_events

    log = tmp_path / "log.csv"
    log.write_text("customer_id;timestamp;amount\n007;2024-01-05;22,77\n007;2024-02-05;-1.022,50\n")
    ev = load_events(log, customer_col="customer_id", time_col="timestamp", amount_col="amount",
                     csv={"sep": ";", "decimal": ",", "thousands": "."})
    assert ev["amount"].tolist() == [22.77, -1022.5] and ev["customer_id"].tolist() == ["007", "007"]



def test_a_semicolon_export_read_without_its_dialect_is_warned_about(tmp_path: Path, caplog) -> None:
    """data.csv.sep=';' alone on a German export: pandas read '45.000' (forty-five thousand) as 45.0 without
    a word, a silent misread by a factor of 1000, and '6.831,02' became a category whose warning
    spoke of free text. Both now say to set data.csv.thousands / data.csv.decimal."""
    import logging

    p = tmp_path / "kunden.csv"
    p.write_text("id;income;score;balance\n1;45.000;1.5;6.831,02\n2;1.250;2.25;-7,50\n3;120.000;3.0;12,00\n"
                 "4;?;4.0;0,99\n")
    with caplog.at_level(logging.WARNING, logger="clm_torch.data.schema"):
        df = read_table(p, csv={"sep": ";"})
        infer_schema(df, id_col="id", source=str(p))
    assert f"{p}: column 'income': every value has three digits after its dot (e.g. '45.000', read as 45.0): in a " \
           "';'-separated export that is a thousands separator; if so, read the file with data.csv.thousands='.'" \
           in caplog.text
    assert "'score'" not in caplog.text  # 1.5, 2.25: decimals
    assert f"{p}: column 'balance' is read as categories: 4 of 4 values are numbers with a decimal comma (e.g. " \
           "'6.831,02'); read the file with data.csv.decimal=','" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="clm_torch.data.schema"):
        right = read_table(p, csv={"sep": ";", "decimal": ",", "thousands": "."})
    assert "three digits" not in caplog.text and right["income"].iloc[:3].tolist() == [45000, 1250, 120000]
    assert right["balance"].tolist() == [6831.02, -7.5, 12.0, 0.99]


def test_the_thousands_dot_check_reads_a_usual_semicolon_export_once(tmp_path: Path, caplog, monkeypatch) -> None:
    """The check for '45.000' read as 45.0 read the whole file a second time for its float columns' text.
    Now a float column whose values (an amount of 1250.5, a score of 0.12345) or first rows' text
    ('79.91', '61') rule it out costs no second read; the header's names are matched by position, so a
    spaced name ('income ', a raw ValueError) and a separator at the end of every line (the columns
    read shifted: no warning) are checked too."""
    import logging

    full_reads = []
    read_csv = pd.read_csv

    def counted(*args, **kw):
        if kw.get("nrows") is None:
            full_reads.append(kw.get("usecols"))
        return read_csv(*args, **kw)

    monkeypatch.setattr(pd, "read_csv", counted)
    rows = "".join(f"{i};{79 + i % 7}.91;{1250.5 * i};{i % 60}\n" for i in range(1500))
    p = tmp_path / "usual.csv"
    p.write_text("id;fee;total;tenure\n" + rows + "1500;;0.12345;\n")
    with caplog.at_level(logging.WARNING, logger="clm_torch.data.schema"):
        df = read_table(p, csv={"sep": ";"})
    assert df["fee"].dtype == df["tenure"].dtype == np.float64 and full_reads == [None]
    assert "three digits" not in caplog.text
    for name, text in (("spaced.csv", "id;income ;score\n1;45.000;1.5\n2;1.250;2.25\n"),
                       ("trailing.csv", "id;income;score\n1;45.000;1.5;\n2;1.250;2.25;\n")):
        (tmp_path / name).write_text(text)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="clm_torch.data.schema"):
            read_table(tmp_path / name, csv={"sep": ";"})
        assert "column 'income': every value has three digits after its dot (e.g. '45.000'" in caplog.text
    # groups of thousands beyond the first (a text column): named, not a raw float() ValueError
    (tmp_path / "millions.csv").write_text("id;assets\n1;12.345.678\n2;1.250.000\n")
    with caplog.at_level(logging.WARNING, logger="clm_torch.data.schema"):
        read_table(tmp_path / "millions.csv", csv={"sep": ";"})
    assert "column 'assets': every value has three digits after its dot (e.g. '12.345.678', read as text)" \
        in caplog.text


def test_header_names_with_surrounding_spaces(tmp_path: Path, caplog) -> None:
    """Excel headers often end in a space ('customer_id '). data.id_col=customer_id was then "not found"
    (the list of columns showed the space only to a careful eye), and the id, not read as text, lost
    its leading zeros. The names are read stripped now, with a warning; two names that become one are
    refused; a raw frame whose column has the space is told so when a model scores it."""
    import logging

    p = tmp_path / "crm.csv"
    p.write_text("customer_id , age,plan\n0001,41,a\n0002,37,b\n")
    with caplog.at_level(logging.WARNING, logger="clm_torch.data.schema"):
        df = read_table(p, text_columns=["customer_id"])
    assert list(df.columns) == ["customer_id", "age", "plan"] and df["customer_id"].tolist() == ["0001", "0002"]
    assert f"{p}: column names with surrounding spaces are read without them: 'customer_id ', ' age'" in caplog.text
    p.write_text("plan,plan \na,b\n")
    with pytest.raises(SchemaError, match=r"column 'plan': the header names 'plan' and 'plan ', one name once"):
        read_table(p)
    enc = FeatureEncoder(numeric=["age"], categorical=["plan"]).fit(pd.DataFrame({"age": [1.0, 2, 3],
                                                                                  "plan": ["a", "b", "a"]}))
    with pytest.raises(SchemaError, match=r"required column missing: \['age'\] \(the frame has 'age ', with "
                                          r"surrounding spaces: strip the names"):
        enc.transform(pd.DataFrame({"age ": [1.0], "plan": ["a"]}))

def test_what_is_read_as_it_should_be(tmp_path: Path) -> None:
    """The counterparts that must keep working: a UTF-16 export with its byte-order mark, a UTF-8 BOM,
    empty trailing header cells, a one-column table, and a zipped or gzipped CSV named as such."""
    import gzip
    import zipfile

    expected = pd.DataFrame({"name": ["José", "Zoë"], "city": ["Köln", "Åre"]})
    p = tmp_path / "excel_unicode.tsv"
    p.write_bytes("name\tcity\nJosé\tKöln\nZoë\tÅre\n".encode("utf-16"))
    pd.testing.assert_frame_equal(read_table(p), expected)
    p = tmp_path / "bom.csv"
    p.write_bytes("name,city\nJosé,Köln\nZoë,Åre\n".encode("utf-8-sig"))
    pd.testing.assert_frame_equal(read_table(p), expected)
    p = tmp_path / "trailing.csv"
    p.write_text("a,b,,\n1,2,,\n")
    assert list(read_table(p).columns)[:2] == ["a", "b"]
    p = tmp_path / "one.csv"
    p.write_text("customer_id\n1\n2\n")
    assert list(read_table(p).columns) == ["customer_id"]
    p = tmp_path / "t.csv.gz"
    p.write_bytes(gzip.compress(b"a,b\n1,2\n"))
    assert read_table(p).to_dict("list") == {"a": [1], "b": [2]}
    p = tmp_path / "t.csv.zip"
    with zipfile.ZipFile(p, "w") as z:
        z.writestr("t.csv", "a,b\n1,2\n")
    assert read_table(p).to_dict("list") == {"a": [1], "b": [2]}


def test_missing_column() -> None:
    schema = TableSchema(numeric=["tenure"], categorical=["plan"], target="churn")
    df = pd.DataFrame({"tenure": [1.0, 2.0], "churn": ["Yes", "No"]})
    with pytest.raises(SchemaError, match=r"my\.csv.*column 'plan'.*missing"):
        validate_frame(df, schema, source="my.csv")


def test_non_numeric_value_names_first_bad_row() -> None:
    schema = TableSchema(numeric=["tenure"])
    df = pd.DataFrame({"tenure": ["1", "2", "", "seven", "eight"]})
    with pytest.raises(SchemaError, match=r"column 'tenure', row 3.*'seven'.*2 non-numeric"):
        validate_frame(df, schema, source="t.csv", require_target=False)


def test_all_empty_column() -> None:
    df = pd.DataFrame({"a": [1, 2, 3], "b": [np.nan] * 3, "y": [0, 1, 0]})
    with pytest.raises(SchemaError, match="column 'b'.*entirely empty"):
        infer_schema(df, target="y", source="x.csv")


def test_target_not_binary_and_single_class() -> None:
    with pytest.raises(SchemaError, match="column 'y'.*binary.*3 classes"):
        validate_target(pd.Series(["a", "b", "c"]), source="s", column="y")
    with pytest.raises(SchemaError, match="only one class"):
        validate_target(pd.Series(["No", "No"]), source="s", column="y")


def test_target_spellings_match_the_training_labels() -> None:
    """Scoring labels spelled unlike the training labels are read right, or refused: never all 0."""
    def y(values, positive, require_both=False):
        return validate_target(pd.Series(values), source="eval.csv", column="churn", positive=positive,
                               require_both=require_both)[0].tolist()

    assert y([1.0, 0.0, 1.0], 1) == [1, 0, 1]  # a blank cell made the 0/1 column float
    assert y(["1.0", "0.0"], "1") == [1, 0]
    assert y([1, 0, 0], "Yes") == [1, 0, 0]  # trained on Yes/No, labelled 1/0
    assert y([True, False], "Yes") == [1, 0]
    assert y(["no", "YES "], "Yes") == [0, 1]
    assert y(["No", "No"], "Yes") == [0, 0]  # only negatives among the labelled rows
    assert y(["stayed", "left", "left"], "left") == [0, 1, 1]
    assert y(["stayed", "left"], "Yes") == [0, 1]  # churn words read by their truth value, as yes/no
    with pytest.raises(SchemaError, match=r"eval.csv.*column 'churn'.*positive class 'Yes' not among the labels"):
        y(["red", "blue"], "Yes")
    with pytest.raises(SchemaError, match="positive class 'Yes' not among"):
        y(["red", "blue"], "Yes", require_both=True)


def test_inf_values_rejected() -> None:
    schema = TableSchema(numeric=["x"])
    with pytest.raises(SchemaError, match="column 'x', row 1.*infinite"):
        validate_frame(pd.DataFrame({"x": [1.0, np.inf]}), schema, require_target=False)


def test_role_inference_and_overrides() -> None:
    df = messy_table(100)
    s = infer_schema(df, target="churn", id_col="customer_id")
    assert s.numeric == ["tenure", "monthly_fee"]
    assert s.categorical == ["contract", "region"]
    assert s.binary == ["paperless"]
    s2 = infer_schema(df, target="churn", id_col="customer_id", overrides={"categorical": ["tenure"]})
    assert "tenure" in s2.categorical and "tenure" not in s2.numeric


def test_date_columns_are_named_and_left_out_of_the_features(caplog) -> None:
    """A signup date read from a CSV (text) used to become a category with a level per date, and one of
    datetime dtype (Parquet) was left out without a word: both are now the datetime role, not a
    feature, with a warning that says how to use them; numbers, free text and a role override are
    not affected."""
    import logging

    n = 60
    dates = pd.Timestamp("2020-01-01") + pd.to_timedelta(np.arange(n) * 7, unit="D")
    df = pd.DataFrame({"id": range(n), "signup": dates.strftime("%Y-%m-%d"), "seen": dates,
                       "last_login": list(dates.strftime("%Y-%m-%dT%H:%M:%S+02:00")[:-1]) + ["n/a"],
                       "code": [f"{2000 + i}-{i % 12 + 1:02d}-xx" for i in range(n)], "year": 2000 + np.arange(n),
                       "y": np.arange(n) % 2})
    with caplog.at_level(logging.WARNING, logger="clm_torch.data.schema"):
        s = infer_schema(df, target="y", id_col="id")
    assert s.datetime == ["signup", "seen", "last_login"] and s.categorical == ["code"] and s.numeric == ["year"]
    assert "column 'signup' holds dates: not a feature" in caplog.text
    assert "+data.roles.categorical=[signup]" in caplog.text
    assert infer_schema(df, target="y", id_col="id", overrides={"categorical": ["signup"]}).categorical == ["signup",
                                                                                                         "code"]
    enc = FeatureEncoder.from_schema(s).fit(df)
    assert enc.feature_columns == ["year", "code"]


# ----------------------------------------------------------------------------- cleaning
def test_cleaning_dedupes_normalises_and_leaves_input_untouched() -> None:
    df = pd.DataFrame({
        "id": ["a", "b", "a", "c"],
        "plan": ["Premium", " premium ", "PREMIUM", "basic"],
        "fee": ["10", "20", "30", "?"],
    })
    before = df.copy()
    schema = TableSchema(id_col="id", numeric=["fee"], categorical=["plan"])
    out, rep = clean_table(df, schema, source="x")
    pd.testing.assert_frame_equal(df, before)
    assert rep.duplicates_dropped == 1 and rep.conflicting_duplicate_ids == 1
    assert list(out["id"]) == ["b", "a", "c"]  # the last 'a' kept
    assert out.loc[out.id == "a", "fee"].item() == 30.0
    assert set(out["plan"]) == {"premium", "basic"} or set(out["plan"]) == {"Premium", "basic"}
    assert out["plan"].nunique() == 2
    assert np.isnan(out.loc[out.id == "c", "fee"].item())
    assert "dropped 1 duplicate" in rep.summary()


def test_ids_differing_only_in_letter_case_are_warned_about_not_merged(caplog) -> None:
    """'C001' and 'c001' in a customer table are two customers: kept apart (case may matter in an id),
    with one warning naming the table, the column, the count and one pair."""
    import logging

    df = pd.DataFrame({"id": ["C001", "c001", "C002", "C003", "c003", "C001"], "fee": [1.0, 2, 3, 4, 5, 6]})
    schema = TableSchema(id_col="id", numeric=["fee"])
    with caplog.at_level(logging.WARNING, logger="clm_torch.data.cleaning"):
        out, rep = clean_table(df, schema, source="crm.csv")
    assert sorted(out["id"]) == ["C001", "C002", "C003", "c001", "c003"] and rep.case_colliding_ids == 2
    assert caplog.text.count("letter case") == 1
    assert "crm.csv: column 'id': 2 distinct ids equal another id but for letter case (e.g. 'C003' and 'c003')" \
        in caplog.text  # the first repeat after the dedupe, which kept the last 'C001'
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="clm_torch.data.cleaning"):
        assert clean_table(df, schema, source="crm.csv", dedupe=False)[1].case_colliding_ids == 2
        clean_table(df.assign(id=df["id"].str.upper()).drop_duplicates("id"), schema, source="crm.csv")
    assert caplog.text.count("letter case") == 1


def test_rows_without_a_customer_id_are_refused_when_training_and_scoring(tmp_path) -> None:
    """Blank ids used to be one 'duplicate' id: all but the last such row dropped silently, in training
    (the report said they were duplicates) and in clm-evaluate's scoring."""
    from clm_torch.evaluate import _table
    from clm_torch.data.sources import TableData

    df = pd.DataFrame({"customer_id": ["C1", None, "C3", np.nan, "C5"], "fee": [1.0, 2, 3, 4, 5],
                       "churn": [0, 1, 0, 1, 0]})
    schema = TableSchema(id_col="customer_id", numeric=["fee"], target="churn")
    with pytest.raises(SchemaError, match=r"crm.csv, column 'customer_id', row 1: missing customer id \(2 rows\)"):
        clean_table(df, schema, source="crm.csv")
    with pytest.raises(SchemaError, match=r"new.csv, column 'customer_id', row 1: missing customer id"):
        _table(None, TableData(frame=df, target="churn", id_col="customer_id", name="new.csv"))
    assert len(clean_table(df.dropna(subset=["customer_id"]), schema, source="crm.csv")[0]) == 3


@pytest.mark.parametrize("clean, warned", [(None, 1), ({"check_id_case": True}, 1), ({"check_id_case": False}, 0)])
def test_data_clean_check_id_case_turns_the_letter_case_warning_off(clean, warned, caplog) -> None:
    """data.clean.check_id_case (on by default) for a user who knows that case matters in the ids, and
    for the pipeline's sub-runs, whose views were checked when they were built."""
    import logging

    rng = np.random.default_rng(0)
    ids = [f"C{i:03d}" for i in range(80)] + ["c001", "c002"]
    df = pd.DataFrame({"customer_id": ids, "fee": rng.normal(size=len(ids)), "churn": np.arange(len(ids)) % 2})
    dm = TableDataModule(FrameSource(df, target="churn", id_col="customer_id"), batch_size=16, clean=clean)
    with caplog.at_level(logging.WARNING, logger="clm_torch.data.cleaning"):
        dm.setup("fit")
    assert caplog.text.count("letter case") == warned
    assert dm.report.case_colliding_ids == 2 * warned and sum(len(f) for f in dm.frames.values()) == len(ids)


def test_churn_words_choose_the_positive_class_and_clip_bounds_are_robust(caplog) -> None:
    """'left'/'stayed' made the minority ('stayed' here) the churn class; a label pair of unknown
    words still takes the minority, with a warning naming the setting that chooses. Clip bounds are
    median ± k robust sd: one value of 1e12 no longer drags the bound past every other value."""
    import logging

    from clm_torch.data.cleaning import clip_bounds
    from clm_torch.data.schema import validate_target

    for labels, positive in ((["left", "stayed", "stayed"], "left"), (["stayed", "left", "left"], "left"),
                             (["active", "gone", "active"], "gone"), (["Yes", "No", "No"], "Yes")):
        y, pos = validate_target(pd.Series(labels), source="t", column="c")
        assert pos == positive and y.tolist() == [float(v == positive) for v in labels]
    df = messy_table(200).assign(churn=lambda d: np.where(d["churn"] == "Yes", "red", "blue"))
    with caplog.at_level(logging.WARNING, logger="clm_torch.data.encoding"):
        enc = FeatureEncoder.from_schema(infer_schema(df, target="churn", id_col="customer_id")).fit(df)
    minority = df["churn"].value_counts().index[-1]
    assert enc.positive_label == minority and "data.encoder.positive_label=<label>" in caplog.text
    lo, hi = clip_bounds(np.r_[np.arange(1.0, 100.0), 1e12], 3.0)
    assert 50 - 3 * 1.4826 * 25 <= lo < 0 < 99 < hi < 200


def test_outlier_clipping_is_optional() -> None:
    df = pd.DataFrame({"x": [0.0] * 50 + [1000.0]})
    schema = TableSchema(numeric=["x"])
    out, rep = clean_table(df, schema)
    assert out["x"].max() == 1000.0
    out, rep = clean_table(df, schema, clip_outliers=3.0)
    assert out["x"].max() < 1000.0 and rep.clipped["x"] == 1


# ----------------------------------------------------------------------------- encoder
def test_encoder_standardises_and_reserves_index_zero() -> None:
    df = messy_table(300)
    s = infer_schema(df, target="churn", id_col="customer_id")
    enc = FeatureEncoder.from_schema(s).fit(df)
    b = enc.transform(df)
    obs = b["num_mask"][:, 0]
    assert torch.allclose(b["num"][obs, 0].mean(), torch.tensor(0.0), atol=1e-5)
    assert torch.allclose(b["num"][obs, 0].std(unbiased=False), torch.tensor(1.0), atol=1e-4)
    fee_missing = df["monthly_fee"].isna().to_numpy()
    assert (~b["num_mask"][:, 1].numpy() == fee_missing).all()
    region = enc.cat_columns.index("region")
    assert (b["cat"][:, region].numpy()[df["region"].isna().to_numpy()] == 0).all()
    new = df.head(3).copy()
    new["region"] = ["mars", "north", np.nan]
    bn = enc.transform(new)
    assert bn["cat"][0, region] == 0 and bn["cat"][1, region] > 0 and bn["cat"][2, region] == 0


def test_encoder_round_trip_through_weights_only_checkpoint() -> None:
    df = messy_table(200)
    enc = FeatureEncoder.from_schema(infer_schema(df, target="churn", id_col="customer_id")).fit(df)
    buf = io.BytesIO()
    torch.save({"state_dict": {}, "clm_preprocessing": {"encoder": enc.state_dict()}}, buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    enc2 = FeatureEncoder.from_state_dict(state["clm_preprocessing"]["encoder"])
    a, b = enc.transform(df), enc2.transform(df)
    for k in a:
        assert torch.equal(a[k], b[k])
    raw = enc2.inverse_numeric(b["num"])
    obs = b["num_mask"].numpy()
    np.testing.assert_allclose(raw[:, 0][obs[:, 0]], df["tenure"].to_numpy()[obs[:, 0]], rtol=1e-5, atol=1e-4)


def test_encoder_log_transforms_skewed_money() -> None:
    rng = np.random.default_rng(0)
    df = pd.DataFrame({"spend": rng.lognormal(3, 1.5, 2000), "age": rng.normal(40, 10, 2000)})
    enc = FeatureEncoder(numeric=["spend", "age"]).fit(df)
    assert enc.num_log == [True, False]
    back = enc.inverse_numeric(enc.transform(df)["num"])
    np.testing.assert_allclose(back[:, 0], df["spend"], rtol=1e-4)


# ----------------------------------------------------------------------------- data module
def test_split_is_stratified_and_seeded() -> None:
    y = np.array([0] * 80 + [1] * 20)
    a = stratified_split(y, 100, [0.7, 0.15], seed=1)
    b = stratified_split(y, 100, [0.7, 0.15], seed=1)
    assert all(np.array_equal(x, z) for x, z in zip(a, b))
    assert sorted(np.concatenate(a).tolist()) == list(range(100))
    assert [int(y[p].sum()) for p in a] == [14, 3, 3]


def test_batches_are_sliced_whole_and_cover_every_row() -> None:
    s = IndexBatchSampler(10, 4, shuffle=True, seed=0)
    batches = list(s)
    assert [len(b) for b in batches] == [4, 4, 2]
    assert sorted(torch.cat(batches).tolist()) == list(range(10))
    assert not torch.equal(torch.cat(batches), torch.cat(list(s)))  # new order each epoch


def test_datamodule_fits_encoder_on_train_only() -> None:
    df = messy_table(400)
    dm = TableDataModule(FrameSource(df, target="churn", id_col="customer_id"), batch_size=64)
    dm.setup()
    train_fee = dm.frames["train"]["monthly_fee"]
    assert float(dm.encoder.num_mean[1]) == pytest.approx(train_fee.mean(), rel=1e-5)
    batch = next(iter(dm.train_dataloader()))
    assert batch["num"].shape == (64, 2) and batch["cat"].dtype == torch.int64
    assert set(dm.ids("test")).isdisjoint(dm.ids("train"))


def test_csv_source_errors_name_file_and_column(tmp_path: Path) -> None:
    p = tmp_path / "c.csv"
    messy_table(50).to_csv(p, index=False)
    with pytest.raises(SchemaError, match=r"c\.csv.*column 'target_x'"):
        table_from_file(str(p), target="target_x").setup()
    df = messy_table(50)
    df["churn"] = "No"
    df.to_csv(p, index=False)
    with pytest.raises(SchemaError, match="only one class"):
        table_from_file(str(p), target="churn").setup()


# ----------------------------------------------------------------------------- per distinct value
def _messy_columns(seed: int) -> list[pd.Series]:
    """Small columns with case/whitespace variants, missing values, ties and mixed Python objects."""
    rng = np.random.default_rng(seed)
    words = ["Yes", "yes", " Yes", "YES ", "No", "no", "n/a", "?", "", "Maybe", "ß", "SS", "1", "1.0", " 2 ", None,
             np.nan]
    mixed = [1, 1.0, True, "1", 2, "x", None]
    out = []
    for n in (1, 7, 30):
        out.append(pd.Series([words[i] for i in rng.integers(0, len(words), n)], dtype=object))
        out.append(pd.Series([words[i] for i in rng.integers(0, 6, n)], dtype="str"))
        out.append(pd.Series([mixed[i] for i in rng.integers(0, len(mixed), n)], dtype=object))
        out.append(pd.Series([str(i) for i in rng.integers(0, 4, n)] + ["x"], dtype="str"))
        out.append(pd.Series(rng.choice([0.0, 1.0, 2.5, np.nan], n)))
        out.append(pd.Series(pd.Categorical([["a", "B", " b", None][i] for i in rng.integers(0, 4, n)])))
    for s in out:
        s.index = rng.permutation(len(s)) + 3
    return out


@pytest.mark.parametrize("seed", range(6))
def test_string_work_per_distinct_value_matches_the_row_wise_result(seed: int) -> None:
    """Spelling normalisation, the numeric-looking check and the encoder's vocabulary run once per
    distinct value; they must give exactly the row-wise results, ties (first seen wins) included."""
    from clm_torch.data.cleaning import _canonical_spellings
    from clm_torch.data.encoding import _category_counts, _category_keys
    from clm_torch.data.schema import _is_missing_token, _looks_numeric

    for s in _messy_columns(seed):
        if not isinstance(s.dtype, pd.CategoricalDtype) and not pd.api.types.is_float_dtype(s):
            is_str = np.array([isinstance(v, str) for v in s.astype(object)])
            out, n = _canonical_spellings(s)
            if is_str.any():  # row-wise: the most frequent stripped spelling per casefolded key
                stripped = s[is_str].astype(str).str.strip()
                key = stripped.str.casefold()
                order = pd.DataFrame({"k": key, "v": stripped}).value_counts(sort=True)
                canon: dict = {}
                for (k, v), _ in order.items():
                    canon.setdefault(k, v)
                expect = s.astype(object).copy()
                expect[is_str] = key.map(canon).to_numpy()
                assert n == int((key.map(canon) != s[is_str].astype(str)).sum())
                assert out.index.equals(s.index)
                assert all(a is b or a == b or (pd.isna(a) and pd.isna(b)) for a, b in zip(out, expect))
            nonnull = s.dropna()
            nonnull = nonnull[~_is_missing_token(nonnull)]
            parses = pd.to_numeric(nonnull.astype("string").str.strip(), errors="coerce").notna().mean()
            assert _looks_numeric(s) == bool(len(nonnull) and parses > 0.98)
        keys = _category_keys(s)
        counts, first = _category_counts(s)
        expect_counts = keys.value_counts(dropna=True)
        assert [str(k) for k in counts.index] == [str(k) for k in expect_counts.index]
        assert counts.tolist() == expect_counts.tolist()
        rows = pd.DataFrame({"k": keys, "v": s}).dropna().drop_duplicates("k")
        assert {str(k): v for k, v in first.items()} == {str(k): v for k, v in zip(rows["k"], rows["v"])}


def test_categories_match_across_spellings_of_the_same_value() -> None:
    """A flag fitted as booleans matches "True"/"false" strings and the reverse; an integer code matches
    "10.0" as read from text; a value that is really new stays unknown (index 0)."""
    df = pd.DataFrame({"flag": [True, False, True, False] * 10, "code": [10, 20, 10, 30] * 10, "x": np.arange(40.0)})
    enc = FeatureEncoder.from_schema(infer_schema(df)).fit(df)
    want = enc.transform(df)["cat"]
    text = df.assign(flag=df["flag"].map({True: "True", False: " false"}), code=df["code"].astype(float).astype(str))
    assert torch.equal(enc.transform(text)["cat"], want)
    as_strings = df.assign(flag=df["flag"].map({True: "true", False: "false"}))
    enc_s = FeatureEncoder.from_schema(infer_schema(as_strings)).fit(as_strings)
    assert torch.equal(enc_s.transform(df)["cat"], enc_s.transform(as_strings)["cat"])
    assert (enc.transform(df.assign(code=40))["cat"][:, enc.cat_columns.index("code")] == 0).all()


def test_a_level_is_matched_by_its_case_folded_spelling_as_cleaning_matches_it() -> None:
    """Cleaning merges spellings by ``str.casefold`` ('Straße' is 'STRASSE'), but the encoder keyed its
    vocabulary by ``str.lower`` ('straße' is not 'strasse'): a street fitted as 'STRASSE' was an
    unseen category (index 0) when scored as 'Straße'. Every level match now uses one key
    (``schema.level_keys``); an encoder fitted before (keys lower-cased) still matches both."""
    rng = np.random.default_rng(0)
    street = rng.choice(["STRASSE", "Weg", "Platz"], 60)
    train = pd.DataFrame({"street": street, "x": np.arange(60.0)})
    train.loc[[1, 2], "street"] = "Straße"  # a minority spelling: cleaning makes it 'STRASSE'
    schema = infer_schema(train, overrides={"categorical": ["street"]})
    clean, report = clean_table(train, schema, source="t.csv")
    assert report.spelling_fixes["street"] == 2 and set(clean["street"]) == {"STRASSE", "Weg", "Platz"}
    for fitted_on in (clean, train):  # the cleaner's output, or the raw table: one level either way
        enc = FeatureEncoder.from_schema(schema).fit(fitted_on)
        assert len(enc.keys["street"]) == 1 + 3
        j = enc.cat_columns.index("street")
        scored = enc.transform(pd.DataFrame({"street": ["Straße", " strasse", "STRASSE", "Weg"], "x": 0.0}))["cat"][:, j]
        assert scored[0] == scored[1] == scored[2] != 0 and scored[3] not in (0, scored[0])
    state = enc.state_dict()  # as saved before the keys were case-folded
    state["keys"]["street"] = [k.replace("strasse", "straße") for k in state["keys"]["street"]]
    old = FeatureEncoder.from_state_dict(state)
    assert torch.equal(old.transform(pd.DataFrame({"street": ["Straße", "STRASSE"], "x": 0.0}))["cat"][:, j],
                       torch.stack([scored[0], scored[0]]))
    # one key everywhere: missing tokens and labels match as levels do
    from clm_torch.data.schema import _is_missing_token, _label_key, level_key, level_keys
    assert level_keys(pd.Series([" Straße ", "NULL", None], dtype=object)).tolist() == ["strasse", "null", pd.NA]
    assert level_key(" Straße ") == _label_key("STRASSE") == "strasse"
    assert _is_missing_token(pd.Series([" N/A ", "Straße"])).tolist() == [True, False]


def test_a_yes_no_column_matches_its_other_spellings_and_unknown_values_are_warned_about(caplog) -> None:
    """A column fitted as 'Yes'/'No' reads True/False, 1/0 and 'Y'/'n' as the same two categories (and
    one fitted as 0/1 reads 'yes'/'no'); a column whose values are mostly categories the encoder never
    saw gets a warning naming it and the known categories (they are read as missing), and only then."""
    import logging

    rng = np.random.default_rng(0)
    yes = rng.random(60) < 0.4
    df = pd.DataFrame({"opt_in": np.where(yes, "Yes", "No"), "code": np.where(yes, 1, 0),
                       "plan": rng.choice(["basic", "pro"], 60), "x": np.arange(60.0)})
    schema = infer_schema(df)
    assert {"opt_in", "code"} <= set(schema.binary)
    enc = FeatureEncoder.from_schema(schema).fit(df)
    want = enc.transform(df)["cat"]
    j = enc.cat_columns.index("opt_in")
    with caplog.at_level(logging.WARNING, logger="clm_torch.data.encoding"):
        # every spelling the labels read as yes/no: text '1.0'/'0.0' (a CSV column of 1.0/0.0 read as
        # text) was unseen here while validate_target read it as a label
        for values in (yes, yes.astype(int), np.where(yes, "Y", "n"), np.where(yes, "TRUE", "false"),
                       np.where(yes, "1.0", "0.0"), np.where(yes, " t", "F")):
            assert torch.equal(enc.transform(df.assign(opt_in=values), source="s.csv")["cat"], want)
        assert torch.equal(enc.transform(df.assign(code=np.where(yes, " yes", "No")))["cat"], want)
    assert "s.csv" not in caplog.text
    with caplog.at_level(logging.WARNING, logger="clm_torch.data.encoding"):
        got = enc.transform(df.assign(opt_in=np.where(yes, "si", "nein")), source="s.csv")["cat"]
    assert (got[:, j] == 0).all()
    assert "s.csv: column 'opt_in': 60 of 60 values are not among the categories the model was trained with (e.g. " \
           in caplog.text and "it knows 'No', 'Yes'" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="clm_torch.data.encoding"):  # a new tier for a fifth
        enc.transform(df.assign(plan=df["plan"].where(np.arange(60) >= 12, "enterprise")), source="s.csv")
    assert "s.csv: column 'plan': 12 of 60 values are not among the categories" in caplog.text
    caplog.clear()
    few = df["plan"].where(np.arange(60) >= 4, "enterprise")  # a few new values: normal, no warning
    with caplog.at_level(logging.WARNING, logger="clm_torch.data.encoding"):
        enc.transform(df.assign(plan=few), source="s.csv")
        wide = FeatureEncoder.from_schema(schema, max_categories=1).fit(df)  # half of 'plan' beyond the cap
        wide.transform(df, source="s.csv")
        assert FeatureEncoder.from_state_dict(wide.state_dict()).unk_share == wide.unk_share
        # the documented missing-value spellings are missing, not categories the model lacks
        tokens = enc.transform(df.assign(plan=df["plan"].where(np.arange(60) >= 20, "n/a")), source="s.csv")["cat"]
        assert (tokens[:20, enc.cat_columns.index("plan")] == 0).all()
    assert "s.csv" not in caplog.text


def test_columns_without_a_pattern_are_flagged(caplog) -> None:
    """Free text (a different value in nearly every row) and constant columns: a warning naming them."""
    import logging

    n = 200
    df = pd.DataFrame({"tenure": np.arange(n, dtype=float), "notes": [f"called on day {i}" for i in range(n)],
                       "country": "DE", "plan": ["a", "b", "c", "d"] * (n // 4)})
    with caplog.at_level(logging.WARNING, logger="clm_torch.data.schema"):
        schema = infer_schema(df, source="crm.csv")
    assert "crm.csv: column 'notes' has a different value in nearly every row (200 of 200)" in caplog.text
    assert "crm.csv: column 'country' has one value ('DE') in every row" in caplog.text
    assert "'plan'" not in caplog.text and "'tenure'" not in caplog.text  # numbers and real categories are fine
    assert "notes" in schema.categorical  # flagged, not silently dropped


def test_columns_no_model_reads_and_number_like_text_are_named(caplog) -> None:
    """Lists in cells and durations are refused with the column (they failed deep in pandas' hashing,
    or wrote a checkpoint that could not be loaded); numbers written with separators or mixed with
    text, read as categories, get a warning saying so (numbers written with thousands commas are read as
    numbers, with a line saying so); a saved row index is left out of the features;
    the roles are logged."""
    import logging

    n = 120
    rng = np.random.default_rng(0)
    base = pd.DataFrame({"fee": rng.normal(50, 10, n), "plan": rng.choice(["a", "b", "c"], n)})
    for col, values, what in [("tags", [["a", "b"]] * n, "a list in each cell"),
                              ("wait", pd.to_timedelta(np.arange(n), unit="D"), "durations")]:
        with pytest.raises(SchemaError, match=rf"crm.parquet, column '{col}': the column holds {what}"):
            infer_schema(base.assign(**{col: values}), source="crm.parquet")
    income = pd.Series([f"{v:,.0f}" for v in rng.uniform(20_000, 90_000, n)])
    age = pd.Series(rng.integers(18, 80, n).astype(str)).where(np.arange(n) % 10 > 0, "old")
    with caplog.at_level(logging.INFO, logger="clm_torch.data.schema"):
        schema = infer_schema(base.assign(income=income, age=age, **{"Unnamed: 0": np.arange(n)}), source="crm.csv")
    text = caplog.text
    assert "crm.csv: column 'income' holds numbers written with separators or currency/percent signs (e.g. '" in text
    assert "crm.csv: column 'age' is read as categories: 108 of 120 values are numbers, but 12 are not (e.g. 'old')" \
        in text
    assert "crm.csv: column 'Unnamed: 0' is a saved row index" in text and "Unnamed: 0" not in schema.features
    assert "'plan'" not in text.split("column roles")[0] and "crm.csv: column roles: numeric ['fee', 'income']" in text
    assert "age" in schema.categorical and "income" in schema.numeric  # '69,400' is a number



def test_money_and_percent_text_is_read_as_numbers(tmp_path: Path, caplog) -> None:
    """An Excel export writes balances as '$1,234.50', fees as '€ 12' and rates as '12%'. Such a column
    used to become a category with a level per customer (a warning, and a model that cannot use the
    balance), and +data.roles.numeric stopped at the first '$'. They are numbers now, in training and
    when a checkpoint scores the raw frame: 12% is the share 0.12; text that is no number still
    stops with its row, and a decimal comma ('1.234,50') says how to read it."""
    import logging

    from clm_torch.data.schema import to_numeric_strict

    n = 60
    rng = np.random.default_rng(0)
    bal = rng.uniform(10, 20_000, n).round(2)
    df = pd.DataFrame({"customer_id": [f"{i:04d}" for i in range(n)],
                       "balance": [f"${v:,.2f}" for v in bal], "fee": [f"€ {v}" for v in rng.choice([0, 5, 12], n)],
                       "rate": [f"{v}%" for v in rng.choice([0, 5, 12, 15], n)], "churn": ["Churned", "Active"] * 30})
    df.loc[3, "balance"] = "n/a"
    with caplog.at_level(logging.INFO, logger="clm_torch.data.schema"):
        schema = infer_schema(df, target="churn", id_col="customer_id", source="bank.csv")
    assert schema.numeric == ["balance", "fee", "rate"], schema
    assert "bank.csv: column 'balance' holds numbers written with separators or currency/percent signs" in caplog.text
    clean, _ = clean_table(df, schema, source="bank.csv")
    assert clean["balance"].iloc[0] == bal[0] and np.isnan(clean["balance"].iloc[3])
    assert set(clean["rate"]) == {0.0, 0.05, 0.12, 0.15} and set(clean["fee"]) == {0.0, 5.0, 12.0}
    enc = FeatureEncoder(numeric=schema.numeric).fit(clean)
    a = enc.transform(df, source="raw")["num"]  # the raw text scores as the cleaned numbers
    b = enc.transform(clean, source="clean")["num"]
    assert torch.equal(torch.nan_to_num(a, 99.0), torch.nan_to_num(b, 99.0))
    got = to_numeric_strict(pd.Series(["$1,234.50", "-$5", "12 €", "69,400", "12%"]), source="s", column="c")
    assert got.tolist() == [1234.5, -5.0, 12.0, 69400.0, 0.12]
    with pytest.raises(SchemaError, match=r"s, column 'c', row 1: expected a number but found '\$12x'"):
        to_numeric_strict(pd.Series(["$1", "$12x"]), source="s", column="c")
    with pytest.raises(SchemaError, match=r"found '1.234,50' .*decimal commas\? read the file with data.csv.decimal=','"):
        to_numeric_strict(pd.Series(["1.234,50"]), source="s", column="c")

def test_roles_naming_the_target_or_the_id_are_refused() -> None:
    """+data.roles.numeric=[churn] used to be ignored without a word (the target is never a feature)."""
    df = pd.DataFrame({"customer_id": ["a", "b", "c"], "fee": [1.0, 2, 3], "churn": [0, 1, 0]})
    for role, col, what in (("numeric", "churn", "the target"), ("categorical", "customer_id", "the id column")):
        with pytest.raises(SchemaError, match=rf"crm.csv, column '{col}': data.roles.{role} names {what}"):
            infer_schema(df, target="churn", id_col="customer_id", overrides={role: [col]}, source="crm.csv")


def test_data_drop_of_a_column_the_table_does_not_have_is_refused() -> None:
    """A misspelt data.drop would leave the column meant to go (often a leaky one) among the features."""
    df = pd.DataFrame({"customer_id": [f"C{i}" for i in range(40)], "fee": np.arange(40.0),
                       "churn": np.arange(40) % 2})
    dm = TableDataModule(FrameSource(df, target="churn", id_col="customer_id", drop=["fe"], name="crm.csv"))
    with pytest.raises(SchemaError, match=r"crm.csv, column 'fe': data.drop names a column the table does not have "
                                          r"\('fe'\); available columns: \['customer_id', 'fee', 'churn'\]"):
        dm.setup("fit")


def test_csv_source_reads_ids_as_text(tmp_path) -> None:
    """data=csv keeps an id column's leading zeros: '021' and '21' are two customers, '0000003' stays."""
    from clm_torch.data.sources.tables import CSVSource

    path = tmp_path / "t.csv"
    pd.DataFrame({"customer_id": ["0000003", "021", "21"], "age": [30, 40, 50], "churn": [0, 1, 0]}).to_csv(path,
                                                                                                        index=False)
    data = CSVSource(path, target="churn", id_col="customer_id").load()
    assert data.frame["customer_id"].tolist() == ["0000003", "021", "21"]
    assert pd.api.types.is_numeric_dtype(data.frame["age"])
    assert pd.api.types.is_numeric_dtype(CSVSource(path, target="churn").load().frame["customer_id"])  # no id_col


def test_log_transform_names_numeric_columns() -> None:
    """data.encoder.log_transform=[col, ...] naming a column that is not a numeric feature (a typo) is
    refused, as is an unknown mode; it used to be ignored silently."""
    from clm_torch.data.encoding import FeatureEncoder

    df = pd.DataFrame({"a": [1.0, 2.0, 30.0], "b": ["x", "y", "x"]})
    schema = TableSchema(numeric=["a"], categorical=["b"])
    with pytest.raises(SchemaError, match=r"column 'nosuch'.*log_transform names \['nosuch'\]"):
        FeatureEncoder.from_schema(schema, log_transform=["nosuch"]).fit(df)
    with pytest.raises(ValueError, match="must be auto, none or a list"):
        FeatureEncoder.from_schema(schema, log_transform="sometimes").fit(df)
    assert FeatureEncoder.from_schema(schema, log_transform=["a"]).fit(df).num_log == [True]


def test_encoder_fit_rules_by_hand() -> None:
    """The fitted rules, each near its edge: "auto" logs a non-negative column whose skew is above 2
    (zeros included: zero-inflated spend is the usual case) and not one whose skew is below 2; a
    column constant in training gets sd 1, so another value at scoring is its difference, not a
    blow-up; max_categories keeps the most frequent categories."""
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    n = 20000
    cols = {
        "zero_inflated": np.where(rng.random(n) < 0.4, 0.0, rng.lognormal(3, 1, n)),  # skew ~ 5, 40 % zeros
        "skew_2_5": rng.gamma(0.64, 1.0, n),  # skew 2 / sqrt(0.64) = 2.5
        "skew_1_4": rng.gamma(2.0, 1.0, n),  # skew 1.41
        "constant": np.full(n, 5.0),
    }
    skew = {c: stats.skew(v) for c, v in cols.items() if c != "constant"}
    assert skew["zero_inflated"] > 3 and 2.2 < skew["skew_2_5"] < 2.8 and 1.2 < skew["skew_1_4"] < 1.7
    df = pd.DataFrame({**cols, "plan": ["a"] * 5 + ["b"] * 3 + ["c"] * (n - 8)})
    enc = FeatureEncoder(numeric=list(cols), categorical=["plan"], max_categories=2).fit(df)
    assert enc.num_log == [True, True, False, False]
    assert float(enc.num_std[3]) == 1.0
    j = enc.num_columns.index("constant")
    new = df.head(2).assign(constant=[5.0, 7.0])
    assert enc.transform(new)["num"][:, j].tolist() == [0.0, 2.0]
    assert enc.vocab["plan"] == ["<unk>", "c", "a"]  # "b" (the rarest) is beyond the cap


def test_clip_bounds_by_hand() -> None:
    """median ± k · 1.4826 MAD (scipy's normal-consistent MAD); with more than half the values equal
    (MAD 0) the IQR / 1.349; with the IQR 0 too, the sample standard deviation."""
    stats = pytest.importorskip("scipy.stats")
    from clm_torch.data.cleaning import clip_bounds

    x = np.random.default_rng(1).normal(10, 2, 501)
    mad = stats.median_abs_deviation(x, scale="normal")
    assert clip_bounds(x, 3.0) == pytest.approx((np.median(x) - 3 * mad, np.median(x) + 3 * mad), rel=1e-4)
    tied = np.array([1.0, 5, 5, 5, 5, 5, 5, 8, 9, 10])  # MAD 0; quartiles 5 and 7.25 (linear interpolation)
    assert clip_bounds(tied, 2.0) == pytest.approx((5 - 2 * 2.25 / 1.349, 5 + 2 * 2.25 / 1.349))
    spike = np.r_[np.zeros(50), 1000.0]
    assert clip_bounds(spike, 1.0) == pytest.approx((-np.std(spike, ddof=1), np.std(spike, ddof=1)))


def test_a_frame_without_the_purchase_sequence_columns_names_the_setting() -> None:
    """A model trained with data.sequence_length > 0 scoring a plain view frame listed the missing
    seq{k}_ columns but not how to build them."""
    from clm_torch.data.schema import SchemaError, infer_schema, validate_frame

    train = pd.DataFrame({"customer_id": ["a", "b", "c"], "recency_days": [1.0, 2.0, 3.0],
                          **{f"seq{k}_days": [1.0, 2.0, 3.0] for k in range(3)}})
    schema = infer_schema(train, id_col="customer_id")
    with pytest.raises(SchemaError, match=r"last 3 purchases as seq\{k\}_ columns: .*sequence_length=3\)"):
        validate_frame(train[["customer_id", "recency_days"]], schema, source="view.csv", require_target=False)
    with pytest.raises(SchemaError) as e:  # other columns: no such hint
        validate_frame(train.drop(columns=["recency_days"]), schema, source="view.csv", require_target=False)
    assert "purchases" not in str(e.value)


def test_repeated_customer_ids_kept_by_dedupe_false_stay_in_one_split() -> None:
    """With data.clean.dedupe=false a customer's rows are all in one split (a row-level split put a
    customer's rows in both train and test); without repeated ids the split is the row split."""
    t = messy_table(400)
    twice = pd.concat([t, t.iloc[:150]], ignore_index=True)
    dm = TableDataModule(FrameSource(twice, target="churn", id_col="customer_id"), clean={"dedupe": False})
    dm.setup()
    ids = {k: set(dm.ids(k)) for k in ("train", "val", "test")}
    assert not (ids["train"] & ids["val"]) and not (ids["train"] & ids["test"]) and not (ids["val"] & ids["test"])
    assert sum(len(dm.frames[k]) for k in ids) == len(twice)
    once = TableDataModule(FrameSource(t, target="churn", id_col="customer_id"), clean={"dedupe": False})
    once.setup()
    _, _, te = stratified_split((t["churn"] == "Yes").to_numpy().astype(int), len(t), [0.7, 0.15], 0)
    assert list(once.ids("test")) == list(t["customer_id"].iloc[te])


def test_parquet_written_with_the_id_as_index_keeps_the_id_column(tmp_path: Path) -> None:
    """``df.set_index("customer_id").to_parquet()``: pandas restores the id as the index on reading;
    it is a column again (it was "id column not found"), and rows are numbered from 0."""
    t = messy_table(100)
    t.set_index("customer_id").to_parquet(tmp_path / "by_id.parquet")
    dm = table_from_file(str(tmp_path / "by_id.parquet"), target="churn", id_col="customer_id")
    dm.setup()
    assert sorted(np.concatenate([dm.ids(k) for k in ("train", "val", "test")])) == sorted(t["customer_id"])
    t.set_index(t.index + 1000).to_parquet(tmp_path / "offset.parquet")
    assert read_table(tmp_path / "offset.parquet").index.equals(pd.RangeIndex(100))


def _unlabelled_table() -> tuple[pd.DataFrame, np.ndarray]:
    """messy_table(600) with 60 targets missing (NaN, '' and the token 'n/a'), and those rows' mask."""
    df = messy_table(600, seed=3).astype({"churn": object})
    unlabelled = np.random.default_rng(5).random(len(df)) < 0.1
    rows = np.flatnonzero(unlabelled)
    df.loc[rows[::3], "churn"] = np.nan
    df.loc[rows[1::3], "churn"] = "n/a"
    df.loc[rows[2::3], "churn"] = np.nan
    # columns the unlabelled rows would change if anything were fitted on them: a huge fee, a new region
    df.loc[rows, "monthly_fee"] = 1e6
    df.loc[rows, "region"] = "atlantis"
    return df, unlabelled


def test_rows_without_a_label_are_refused_naming_the_setting_or_dropped_before_anything_is_fitted(
        tmp_path: Path, caplog) -> None:
    """A target missing in some rows (customers inside their label window) is refused with the count,
    the share, the first row and data.drop_unlabelled; with data.drop_unlabelled=true those rows are
    dropped with one warning (count, share, file, column) and the run is that of the file without
    them: no split holds them, and the encoder (the checkpoint's preprocessing) is the same."""
    df, unlabelled = _unlabelled_table()
    path, labelled_path = tmp_path / "crm.csv", tmp_path / "labelled.csv"
    df.to_csv(path, index=False)
    df.loc[~unlabelled].to_csv(labelled_path, index=False)
    n = int(unlabelled.sum())
    with pytest.raises(SchemaError, match=rf"crm.csv, column 'churn', row {np.flatnonzero(unlabelled)[0]}: target has {n} missing values "
                                          rf"\({n / 600:.1%} of 600 rows\).*set data.drop_unlabelled=true"):
        table_from_file(str(path), target="churn", id_col="customer_id").setup()
    with caplog.at_level("WARNING"):
        dm = table_from_file(str(path), target="churn", id_col="customer_id", drop_unlabelled=True)
        dm.setup()
    said = [r.getMessage() for r in caplog.records if "without a label" in r.getMessage()]
    assert len(said) == 1 and said[0].startswith(f"{path}, column 'churn': dropped {n} of 600 rows "
                                                 f"({100 * n / 600:.1f} %)"), said
    ref = table_from_file(str(labelled_path), target="churn", id_col="customer_id")
    ref.setup()
    gone = set(df.loc[unlabelled, "customer_id"])
    for split in ("train", "val", "test"):
        assert not gone & set(dm.ids(split)), split
        assert list(dm.ids(split)) == list(ref.ids(split)), split
        assert all(torch.equal(t, ref.tensors[split][k]) for k, t in dm.tensors[split].items()), split
    state, ref_state = dm.preprocessing_state(), ref.preprocessing_state()
    assert str(state) == str(ref_state)
    assert "atlantis" not in str(state) and max(state["encoder"]["num_max"]) < 1e6


def test_a_continuous_target_without_a_value_is_refused_or_dropped() -> None:
    """The spend target: a missing value used to be refused per split ('[train split]', a row of it) without
    naming the setting; it is now refused for the table as a whole, or the row is dropped."""
    df = messy_table(400, seed=1).drop(columns=["churn"])
    df["spend"] = np.random.default_rng(0).gamma(2.0, 50.0, len(df))
    df.loc[[3, 10, 50], "spend"] = np.nan
    with pytest.raises(SchemaError, match=r"<dataframe>, column 'spend', row 3: target has 3 missing values "
                                          r"\(0.8% of 400 rows\).*data.drop_unlabelled=true"):
        TableDataModule(FrameSource(df, target="spend"), target_type="continuous").setup()
    dm = TableDataModule(FrameSource(df, target="spend", id_col="customer_id"), target_type="continuous",
                         drop_unlabelled=True)
    dm.setup()
    assert sum(len(dm.tensors[s]["y"]) for s in ("train", "val", "test")) == 397
    assert not any(torch.isnan(dm.tensors[s]["y"]).any() for s in ("train", "val", "test"))
    with pytest.raises(SchemaError, match="column 'spend': target column is entirely empty"):
        TableDataModule(FrameSource(df.assign(spend=np.nan), target="spend"), target_type="continuous",
                        drop_unlabelled=True).setup()
    with pytest.raises(ValueError, match="data.drop_unlabelled must be true or false, not 'yes'"):
        TableDataModule(FrameSource(df, target="spend"), drop_unlabelled="yes")


def test_a_date_column_written_day_first_is_a_date_with_data_date_format(tmp_path: Path, caplog) -> None:
    """'13/01/2024' dates in a customer table used to become a category with a level per date without a
    word; they are now named in a warning that suggests data.date_format, and with it they are the
    datetime role (not a feature), as ISO dates are, in clm-train's data=csv; '01.02.2024' with '%d.%m.%Y'
    stays text in a ';' file with decimal commas, and a table date not in the format stays a category."""
    import logging

    df = messy_table(300, seed=2)
    signup = pd.Timestamp("2022-01-01") + pd.to_timedelta(np.arange(len(df)) * 2, unit="D")
    df["signup"] = signup.strftime("%d/%m/%Y")
    df.loc[5, "signup"] = None
    path = tmp_path / "crm.csv"
    df.to_csv(path, index=False)
    with caplog.at_level(logging.WARNING, logger="clm_torch.data.schema"):
        plain = table_from_file(str(path), target="churn", id_col="customer_id")
        plain.setup()
    assert "signup" in plain.schema.categorical
    assert (f"{path}: column 'signup' holds dates not written as ISO 8601 (e.g. '01/01/2022'): read as categories; "
            "to read them as dates (not a feature, as ISO dates are), set data.date_format='%d/%m/%Y' (day first: "
            "'13/01/2022' has a first number above 12)") in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="clm_torch.data.schema"):
        dated = table_from_file(str(path), target="churn", id_col="customer_id", date_format="%d/%m/%Y")
        dated.setup()
    assert dated.schema.datetime == ["signup"] and "signup" not in dated.encoder.feature_columns
    assert "column 'signup' holds dates: not a feature" in caplog.text
    other = table_from_file(str(path), target="churn", id_col="customer_id", date_format="%m/%d/%Y")
    other.setup()
    assert "signup" in other.schema.categorical  # 13/01/2022 is no month-first date: not every value parses
    with pytest.raises(ValueError, match=r"data.date_format='%Q': expected a strftime format"):
        table_from_file(str(path), target="churn", date_format="%Q")


def test_data_date_format_is_a_setting_of_every_config_that_reads_dates(make_cfg, tmp_path: Path) -> None:
    """data.date_format is in data=csv, parquet, parquet_shards, events and interactions (no '+'); clm-train
    refuses a format that is not one before the run directory is made; data=interactions reads its
    times in it."""
    import hydra

    from clm_torch.train import SettingError, check_settings

    for data in ("csv", "parquet", "parquet_shards", "events", "interactions"):
        cfg = make_cfg("model=recommender" if data == "interactions" else "model=churn", f"data={data}",
                       "data.path=x", "data.date_format='%d.%m.%Y %H:%M'", out=data)
        assert cfg.data.date_format == "%d.%m.%Y %H:%M"
        check_settings(cfg)
    for bad in ("DD/MM/YYYY", "%Q", 5):
        cfg.data.date_format = bad  # (the last composed: data=interactions)
        with pytest.raises(SettingError, match=rf"data.date_format={bad!r}: expected a strftime format such as "
                                               "'%d/%m/%Y'"):
            check_settings(cfg)
    log = tmp_path / "log.csv"
    pd.DataFrame({"user": ["u1", "u1", "u2", "u2"], "item": ["a", "b", "a", "c"],
                  "ts": ["13/01/2024 10:00", "14/01/2024 09:30", "02/02/2024 08:00", "01/03/2024 18:00"]}).to_csv(
        log, index=False)
    cfg = make_cfg("model=recommender", "data=interactions", f"data.path={log}", "data.user_col=user",
                   "data.item_col=item", "data.time_col=ts", "data.date_format='%d/%m/%Y %H:%M'", out="inter")
    times = hydra.utils.instantiate(cfg.data).source.load().frame["time"]
    assert times.tolist() == [pd.Timestamp(t).timestamp() for t in ("2024-01-13 10:00", "2024-01-14 09:30",
                                                                    "2024-02-02 08:00", "2024-03-01 18:00")]
