"""``nba evaluate``: replay a logged, randomised experiment through the engine and learner."""

from __future__ import annotations

import argparse
import sys
import time

from nba_service.cli._common import policy_knobs, policy_options, write_json


def cmd_suite(args: argparse.Namespace) -> int:
    """``nba evaluate --suite``: every problem of the bake-off, one table, JSON and a plot per problem."""
    from pathlib import Path

    from nba_service.tools.evaluation import ReplayConfig
    from nba_service.tools.evaluation.suite import SUITE, plot_suite_result, run_suite, suite_table

    names = tuple(n.strip() for n in args.problems.split(",") if n.strip()) if args.problems else SUITE
    try:
        config = ReplayConfig(**policy_knobs(args, "prior"))
        plots = Path(args.plot_dir) if args.plot_dir else None
        if plots is not None:
            plots.mkdir(parents=True, exist_ok=True)
        print(f"learned policy: {config.describe()}", flush=True)

        def progress(result: object) -> None:
            print(f"  {result.name}: {result.verdict()} ({result.seconds:.1f} s)", flush=True)  # type: ignore[attr-defined]

        results = run_suite(names, config, on_result=progress)
    except (ValueError, OSError) as exc:
        print(f"nba evaluate: {exc}", file=sys.stderr)
        return 2
    print(suite_table(results))
    passed = sum(r.passed for r in results)
    inconclusive = sum(r.inconclusive for r in results)
    print(
        f"{passed} of {len(results)} problems passed, {inconclusive} inconclusive (too few rows to separate policies)"
    )
    write_json(args.json, {"config": config.describe(), "problems": [r.to_json() for r in results]})
    if plots is not None:
        for result in results:
            plot_suite_result(result, plots / f"{result.name}.png")
        print(f"learning curves in {plots}/")
    failed = len(results) - passed - inconclusive
    return 1 if failed else 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    if args.suite:
        return cmd_suite(args)
    from nba_service.tools.evaluation import (
        DATASETS,
        LogFormatError,
        ReplayConfig,
        dataset_path,
        evaluate,
        parse_rules,
        plot_learning_curve,
        read_log,
    )

    try:
        if args.dataset:
            if args.file:
                raise LogFormatError("give either FILE or --dataset, not both")
            preset = DATASETS[args.dataset]
            path = dataset_path(args.dataset)
            action_col = args.action_col or preset["action_col"]
            reward_col = args.reward_col or preset["reward_col"]
            feature_cols = args.feature_cols.split(",") if args.feature_cols else list(preset["feature_cols"])
            propensity, propensity_col = args.propensity, args.propensity_col
            if propensity is None and not propensity_col:
                propensity, propensity_col = preset["propensity"], preset["propensity_col"]
        else:
            if not args.file:
                raise LogFormatError("name the log: FILE.csv[.gz] or --dataset NAME")
            missing = [
                flag
                for flag, value in (
                    ("--action-col", args.action_col),
                    ("--reward-col", args.reward_col),
                    ("--feature-cols", args.feature_cols),
                )
                if not value
            ]
            if missing:
                raise LogFormatError(f"{', '.join(missing)} required with a FILE")
            path, action_col, reward_col = args.file, args.action_col, args.reward_col
            feature_cols, propensity = args.feature_cols.split(","), args.propensity
            propensity_col = args.propensity_col
        config = ReplayConfig(**policy_knobs(args, "prior"))
        started = time.perf_counter()
        data = read_log(
            path,
            action_col=action_col,
            reward_col=reward_col,
            feature_cols=feature_cols,
            propensity_col=propensity_col,
            propensity=propensity,
        )
        rules = parse_rules(args.rule or (), data)
        result = evaluate(data, config, progress=sys.stderr.isatty(), rules=rules)
    except (LogFormatError, ValueError) as exc:
        print(f"nba evaluate: {exc}", file=sys.stderr)
        return 2
    elapsed = time.perf_counter() - started
    name = args.dataset or str(args.file)
    print(
        f"{name}: reward {reward_col} ({data.describe_reward()}), {len(data):,} rows, {len(data.actions)} actions, "
        f"features {','.join(data.feature_cols)}"
    )
    print(f"learned policy: {config.describe()}; replayed in {elapsed:.1f} s")
    print(result.table())
    if result.rule is not None:
        print(f"rule: {result.rule_text}")
    write_json(args.json, {"data": name, **result.to_json()})
    if args.plot:
        plot_learning_curve(result, args.plot, title=f"{name}: {reward_col}, {config.describe()}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    ev = sub.add_parser(
        "evaluate",
        help="replay a logged randomised experiment through the engine and learner",
        description="Replay a logged, randomised experiment (CSV, optionally gzipped) through the real decision "
        "engine and learner, online, with the replay method; report the learned policy's reward "
        "with a 95% CI next to uniform random, each fixed action and the best fixed action. "
        "With --suite, run the whole bake-off instead.",
    )
    ev.add_argument("file", nargs="?", metavar="FILE.csv[.gz]", help="the log (or use --dataset)")
    ev.add_argument(
        "--dataset",
        choices=("hillstrom", "obd-men"),
        help="a shipped data set with its default columns (hillstrom: action segment, reward visit, "
        "features recency,history,mens,womens,zip_code,newbie,channel, propensity 1/3; obd-men: Open Bandit "
        "Dataset sample, action item_id, reward click, features position,user_feature_0..3, "
        "propensity column propensity_score)",
    )
    ev.add_argument("--action-col", help="column of the logged action")
    ev.add_argument("--reward-col", help="column of the reward (acceptance, conversion or value)")
    ev.add_argument(
        "--feature-cols",
        help="comma-separated columns the policy may use; no other column is read as a feature (required with FILE)",
    )
    logged = ev.add_mutually_exclusive_group()
    logged.add_argument("--propensity-col", help="column of the logging probability of the logged action")
    logged.add_argument(
        "--propensity",
        type=float,
        help="the same logging probability for every row (default: each action's share of the log)",
    )
    policy_options(ev, "seed of the exploration (default 0)")
    ev.add_argument("--prior", type=float, help="every action's cold-start reward guess (default 0.1)")
    ev.add_argument(
        "--rule",
        action="append",
        metavar="COLUMN=VALUE[,...]:ACTION",
        help="a targeting rule to compare with, one line per option, first match wins, the last "
        "one *:ACTION (e.g. --rule 'mens=1:Mens E-Mail' --rule '*:Womens E-Mail'); it reads "
        "only the feature columns",
    )
    ev.add_argument("--json", metavar="FILE", help="write the figures as JSON")
    ev.add_argument("--plot", metavar="FILE.png", help="draw the learning curve")
    suite = ev.add_argument_group("the bake-off")
    suite.add_argument(
        "--suite",
        action="store_true",
        help="run the learned policy on every problem of the suite (logged experiments, classification data "
        "as bandits, drifting streams) next to random, the best fixed action and the oracle; exit 1 if any fails",
    )
    suite.add_argument("--problems", metavar="NAME,...", help="with --suite: only these problems")
    suite.add_argument("--plot-dir", metavar="DIR", help="with --suite: a learning-curve PNG per problem")
    ev.set_defaults(func=cmd_evaluate)
