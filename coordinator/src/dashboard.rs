//! The public dashboard at `/`: published national indicators by theme, each with a quarterly trend
//! chart and its 95% band (server-rendered SVG, no script, no outside resources), the latest value
//! with its interval, how many providers reported, the definition, the privacy cost in plain words,
//! the reviewers' interpretation, and CSV/JSON downloads. Dutch by default, English by a link.

use crate::publish::Published;
use crate::release::Release;
use crate::store::Interpretation;
use policies::wire::BudgetStatus;
use policies::{Catalog, Indicator};
use std::collections::BTreeMap;
use std::fmt::Write;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lang {
    Nl,
    En,
}

impl Lang {
    pub fn parse(s: Option<&str>) -> Lang {
        match s {
            Some("en") => Lang::En,
            _ => Lang::Nl,
        }
    }

    fn code(self) -> &'static str {
        match self {
            Lang::Nl => "nl",
            Lang::En => "en",
        }
    }

    fn t(self, nl: &'static str, en: &'static str) -> &'static str {
        match self {
            Lang::Nl => nl,
            Lang::En => en,
        }
    }
}

/// Themes in the order the monitor presents them: (catalog theme, Dutch, English).
pub const THEMES: &[(&str, &str, &str)] = &[
    (
        "vrijheidsbeperking",
        "Vrijheidsbeperking",
        "Freedom-restricting measures",
    ),
    ("zorg", "Zorg", "Care"),
    ("maatwerk", "Individueel maatwerk", "Individual tailoring"),
    (
        "matching_plaatsing",
        "Matching en plaatsing",
        "Matching and placement",
    ),
    ("suicide", "Suïcidepreventie", "Suicide prevention"),
    ("kleinschaligheid", "Kleinschaligheid", "Small-scale living"),
    ("onderwijs", "Onderwijs", "Education"),
    ("ervaringen", "Panel: ervaringen", "Panel: experiences"),
];

pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn number(x: Option<f64>, lang: Lang) -> String {
    match x {
        Some(v) if v.is_finite() => {
            let s = if (v - v.round()).abs() < 1e-9 {
                format!("{v:.0}")
            } else {
                format!("{v:.1}")
            };
            match lang {
                Lang::Nl => s.replace('.', ","),
                Lang::En => s,
            }
        }
        _ => "–".into(),
    }
}

fn group_label(group: &BTreeMap<String, String>) -> String {
    if group.is_empty() {
        String::new()
    } else {
        group
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Colours with at least 4.5:1 contrast on white.
const COLOURS: &[&str] = &[
    "#1b4f8a", "#a3341f", "#2d6a2d", "#6b3f98", "#8a5a00", "#006d75",
];
const MAX_SERIES: usize = 6;

/// One series per group: (label, points by period).
type Series<'a> = Vec<(String, Vec<&'a Published>)>;

fn series<'a>(records: &[&'a Published]) -> Series<'a> {
    let mut by_group: BTreeMap<String, Vec<&'a Published>> = BTreeMap::new();
    for r in records {
        by_group.entry(group_label(&r.group)).or_default().push(r);
    }
    let mut out: Series<'a> = by_group.into_iter().collect();
    for (_, points) in &mut out {
        points.sort_by(|a, b| a.period.cmp(&b.period));
    }
    out.truncate(MAX_SERIES);
    out
}

/// A trend chart: one line per group over the quarters, with its 95% band.
fn chart(id: &str, title: &str, s: &Series<'_>, lang: Lang) -> String {
    // The right margin leaves room for the last quarter's label, centred on its point.
    let (w, h, left, right, top, bottom) = (640.0, 240.0, 56.0, 30.0, 12.0, 36.0);
    let mut periods: Vec<&str> = s
        .iter()
        .flat_map(|(_, ps)| ps.iter().map(|p| p.period.as_str()))
        .collect();
    periods.sort();
    periods.dedup();
    let values = s.iter().flat_map(|(_, ps)| {
        ps.iter()
            .flat_map(|p| [p.ci_low, p.ci_high, p.estimate])
            .flatten()
            .filter(|v| v.is_finite())
    });
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
        (a.min(v), b.max(v))
    });
    let anything = lo.is_finite();
    let (lo, hi, step) = axis(
        if anything { lo.min(0.0) } else { 0.0 },
        if anything { hi } else { 1.0 },
    );
    let x = |p: &str| {
        let i = periods.iter().position(|q| *q == p).unwrap_or(0) as f64;
        let n = (periods.len().max(2) - 1) as f64;
        left + i * (w - left - right) / n
    };
    let y = |v: f64| top + (hi - v) / (hi - lo) * (h - top - bottom);
    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg viewBox="0 0 {w} {h}" width="100%" role="img" aria-labelledby="{id}-title {id}-desc" xmlns="http://www.w3.org/2000/svg"><title id="{id}-title">{}</title><desc id="{id}-desc">{}</desc>"#,
        escape(title),
        lang.t(
            "Lijn: landelijke schatting per kwartaal; band: 95%-interval. De getallen staan in de tabel eronder.",
            "Line: national estimate per quarter; band: 95% interval. The numbers are in the table below."
        )
    );
    let ticks = ((hi - lo) / step).round() as usize;
    for k in 0..=ticks {
        let v = lo + step * k as f64;
        let yy = y(v);
        let _ = write!(
            svg,
            r##"<line x1="{left}" x2="{}" y1="{yy:.1}" y2="{yy:.1}" stroke="#d0d0d0"/><text x="{}" y="{:.1}" font-size="11" text-anchor="end" fill="#333">{}</text>"##,
            w - right,
            left - 6.0,
            yy + 4.0,
            axis_label(v, step, lang)
        );
    }
    if !anything {
        let _ = write!(
            svg,
            r##"<text class="no-values" x="{:.1}" y="{:.1}" font-size="13" text-anchor="middle" fill="#333">{}</text>"##,
            (left + w - right) / 2.0,
            (top + h - bottom) / 2.0,
            lang.t(
                "Geen waarden te tonen: alle cijfers zijn onderdrukt of onbepaald.",
                "No values to show: every figure is suppressed or undefined."
            )
        );
    }
    for p in &periods {
        let _ = write!(
            svg,
            r##"<text x="{:.1}" y="{}" font-size="11" text-anchor="middle" fill="#333">{}</text>"##,
            x(p),
            h - 12.0,
            escape(p)
        );
    }
    for (i, (_, points)) in s.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        let shown: Vec<&&Published> = points
            .iter()
            .filter(|p| p.estimate.is_some_and(f64::is_finite))
            .collect();
        if shown.is_empty() {
            continue;
        }
        let upper: Vec<String> = shown
            .iter()
            .filter_map(|p| Some(format!("{:.1},{:.1}", x(&p.period), y(p.ci_high?))))
            .collect();
        let lower: Vec<String> = shown
            .iter()
            .rev()
            .filter_map(|p| Some(format!("{:.1},{:.1}", x(&p.period), y(p.ci_low?))))
            .collect();
        if upper.len() == shown.len() && lower.len() == shown.len() {
            let _ = write!(
                svg,
                r#"<polygon class="band" points="{} {}" fill="{colour}" fill-opacity="0.15" stroke="none"/>"#,
                upper.join(" "),
                lower.join(" ")
            );
        }
        let line: Vec<String> = shown
            .iter()
            .filter_map(|p| Some(format!("{:.1},{:.1}", x(&p.period), y(p.estimate?))))
            .collect();
        let _ = write!(
            svg,
            r#"<polyline class="estimate" points="{}" fill="none" stroke="{colour}" stroke-width="2"/>"#,
            line.join(" ")
        );
        for p in &shown {
            if let Some(e) = p.estimate {
                let _ = write!(
                    svg,
                    r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{colour}"/>"#,
                    x(&p.period),
                    y(e)
                );
            }
        }
    }
    svg.push_str("</svg>");
    svg
}

/// A value axis from at most `lo` to at least `hi` in round steps (1, 2, 2.5 or 5 × 10ᵏ), about
/// four of them: (axis low, axis high, step).
fn axis(lo: f64, hi: f64) -> (f64, f64, f64) {
    let hi = if hi > lo { hi } else { lo + 1.0 };
    let rough = (hi - lo) / 4.0;
    let magnitude = 10f64.powf(rough.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * magnitude)
        .find(|s| *s >= rough)
        .unwrap_or(10.0 * magnitude);
    ((lo / step).floor() * step, (hi / step).ceil() * step, step)
}

/// An axis value with as many decimals as the step needs (0.25 → two), in the page's language.
fn axis_label(v: f64, step: f64, lang: Lang) -> String {
    let decimals = (0..6)
        .find(|k| {
            let scaled = step * 10f64.powi(*k);
            (scaled - scaled.round()).abs() < 1e-6
        })
        .unwrap_or(6) as usize;
    let s = format!("{v:.decimals$}");
    let s = if s
        .trim_start_matches('-')
        .chars()
        .all(|c| c == '0' || c == '.')
    {
        s.trim_start_matches('-').to_string() // no "-0"
    } else {
        s
    };
    match lang {
        Lang::Nl => s.replace('.', ","),
        Lang::En => s,
    }
}

/// The numbers behind a chart, as a table: the chart's text alternative.
fn table(s: &Series<'_>, lang: Lang) -> String {
    let mut t = format!(
        "<table><caption>{}</caption><thead><tr><th scope=\"col\">{}</th><th scope=\"col\">{}</th><th scope=\"col\">{}</th><th scope=\"col\">{}</th><th scope=\"col\">{}</th></tr></thead><tbody>",
        lang.t("Cijfers in de grafiek", "Numbers in the chart"),
        lang.t("Kwartaal", "Quarter"),
        lang.t("Groep", "Group"),
        lang.t("Schatting", "Estimate"),
        lang.t("95%-interval", "95% interval"),
        lang.t("Aanbieders", "Providers"),
    );
    for (label, points) in s {
        for p in points {
            let value = if p.suppressed {
                lang.t("onderdrukt (te klein)", "suppressed (too small)")
                    .to_string()
            } else {
                number(p.estimate, lang)
            };
            let _ = write!(
                t,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{} – {}</td><td>{}/{}</td></tr>",
                escape(&p.period),
                escape(if label.is_empty() { "–" } else { label }),
                value,
                number(p.ci_low, lang),
                number(p.ci_high, lang),
                p.providers_reporting,
                p.providers_total
            );
        }
    }
    t.push_str("</tbody></table>");
    t
}

fn cost_words(ind: &Indicator, catalog: &Catalog, lang: Lang) -> String {
    let rho = catalog.rho(ind);
    let eps = policies::sensitivity::zcdp_to_epsilon(rho, 1e-6);
    match lang {
        Lang::Nl => format!(
            "Privacykosten: ρ = {} per kwartaal per aanbieder (ongeveer ε = {} bij δ = 10⁻⁶). Elke aanbieder voegt zelf ruis toe aan zijn antwoord, zodat niemand kan zien of één jongere in de gegevens zit; het jaarbudget van een aanbieder begrenst hoeveel er in totaal over dezelfde jongeren wordt vrijgegeven.",
            format!("{rho}").replace('.', ","),
            format!("{eps:.1}").replace('.', ",")
        ),
        Lang::En => format!(
            "Privacy cost: ρ = {rho} per quarter per provider (about ε = {eps:.1} at δ = 10⁻⁶). Each provider adds its own noise to its answer, so nobody can tell whether one youth is in the data; a provider's yearly budget bounds how much is released about the same youths in total."
        ),
    }
}

/// The whole page.
pub fn render(
    catalog: &Catalog,
    records: &[Published],
    interpretations: &[Interpretation],
    releases: &[Release],
    population: Option<&crate::reference::Source>,
    budgets: &BTreeMap<String, BudgetStatus>,
    lang: Lang,
) -> String {
    // When each record period was made public (its round's release).
    let released_on: BTreeMap<&str, &str> = releases
        .iter()
        .flat_map(|r| r.periods.iter().map(move |p| (p.as_str(), r.day())))
        .collect();
    let mut by_indicator: BTreeMap<&str, Vec<&Published>> = BTreeMap::new();
    for r in records {
        by_indicator
            .entry(r.indicator.as_str())
            .or_default()
            .push(r);
    }
    let other = match lang {
        Lang::Nl => ("en", "English"),
        Lang::En => ("nl", "Nederlands"),
    };
    let mut html = String::new();
    let _ = write!(
        html,
        r##"<!doctype html>
<html lang="{code}">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
<title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; color: #1a1a1a; background: #fff; margin: 0; line-height: 1.5; }}
header, main, footer {{ max-width: 60rem; margin: 0 auto; padding: 0 1rem; }}
header {{ display: flex; justify-content: space-between; align-items: baseline; flex-wrap: wrap; }}
a {{ color: #0b4a8b; }}
a:focus, summary:focus {{ outline: 3px solid #c25100; outline-offset: 2px; }}
.skip {{ position: absolute; left: -999px; }} .skip:focus {{ left: 1rem; top: 1rem; background: #fff; }}
nav ul {{ list-style: none; padding: 0; display: flex; flex-wrap: wrap; gap: .5rem 1rem; }}
article {{ border-top: 1px solid #bbb; padding: 1rem 0; }}
.latest {{ font-size: 1.25rem; }}
table {{ border-collapse: collapse; font-size: .9rem; }} td, th {{ border: 1px solid #bbb; padding: .2rem .5rem; text-align: left; }}
.duiding {{ background: #f3f6fa; border-left: 4px solid #1b4f8a; padding: .5rem 1rem; }}
</style>
</head>
<body>
<a class="skip" href="#main">{skip}</a>
<header>
<h1>{title}</h1>
<p><a href="/?lang={other_code}" hreflang="{other_code}" lang="{other_code}" id="language-switch">{other_name}</a></p>
</header>
<main id="main">
<p>{intro}</p>
<section id="how-to-read" aria-labelledby="how-to-read-title">
<h2 id="how-to-read-title">{how_title}</h2>
<ul>
<li>{how_band}</li>
<li>{how_noise}</li>
<li>{how_coverage}</li>
</ul>
</section>
"##,
        code = lang.code(),
        title = lang.t("StroomOP Monitor: landelijke indicatoren", "StroomOP Monitor: national indicators"),
        skip = lang.t("Naar de inhoud", "Skip to content"),
        other_code = other.0,
        other_name = other.1,
        intro = lang.t(
            "Landelijke cijfers over gesloten jeugdzorg (JeugdzorgPlus), per kwartaal. De gegevens blijven bij de aanbieders: elke aanbieder beantwoordt alleen goedgekeurde vragen, met ruis die de privacy van iedere jongere beschermt.",
            "National figures on secure youth care (JeugdzorgPlus), per quarter. The records stay with the providers: each provider answers only approved questions, with noise that protects every youth's privacy."
        ),
        how_title = lang.t("Zo leest u deze cijfers", "How to read this"),
        how_band = lang.t(
            "De band rond de lijn is het 95%-interval: met 95% zekerheid ligt de uitkomst zonder ruis daarbinnen.",
            "The band around the line is the 95% interval: with 95% confidence the figure without noise lies inside it."
        ),
        how_noise = lang.t(
            "Elk getal bevat bewust toegevoegde toevalsruis (differentiële privacy). Kleine verschillen tussen kwartalen kunnen daardoor ruis zijn; kijk of de banden overlappen.",
            "Every number carries deliberately added random noise (differential privacy). Small differences between quarters may be noise; check whether the bands overlap."
        ),
        how_coverage = lang.t(
            "‘Aanbieders’ zegt hoeveel aanbieders hun antwoord gaven van het aantal dat gevraagd is. Ontbreekt er een, dan is het cijfer geen landelijk totaal.",
            "‘Providers’ says how many providers answered out of those asked. If one is missing, the figure is not a national total."
        ),
    );
    let _ = write!(
        html,
        "<nav aria-label=\"{}\"><ul>",
        lang.t("Thema's", "Themes")
    );
    for (theme, nl, en) in THEMES {
        if catalog.indicators.values().any(|i| i.theme == *theme) {
            let _ = write!(
                html,
                "<li><a href=\"#theme-{theme}\">{}</a></li>",
                escape(if lang == Lang::Nl { nl } else { en })
            );
        }
    }
    html.push_str("</ul></nav>\n");
    html.push_str(&release_section(releases, lang));
    for (theme, nl, en) in THEMES {
        let indicators: Vec<&Indicator> = catalog
            .indicators
            .values()
            .filter(|i| i.theme == *theme)
            .collect();
        if indicators.is_empty() {
            continue;
        }
        let _ = writeln!(
            html,
            "<section id=\"theme-{theme}\" class=\"theme\" aria-labelledby=\"theme-{theme}-title\"><h2 id=\"theme-{theme}-title\">{}</h2>",
            escape(if lang == Lang::Nl { nl } else { en })
        );
        let mut shown = 0;
        for ind in indicators {
            let Some(recs) = by_indicator.get(ind.id.as_str()) else {
                continue;
            };
            shown += 1;
            html.push_str(&indicator_block(
                catalog,
                ind,
                recs,
                interpretations,
                &released_on,
                population,
                lang,
            ));
        }
        if shown == 0 {
            let _ = write!(
                html,
                "<p>{}</p>",
                lang.t(
                    "Voor dit thema is nog niets gepubliceerd.",
                    "Nothing has been published for this theme yet."
                )
            );
        }
        html.push_str("</section>\n");
    }
    html.push_str(&budget_section(budgets, lang));
    let _ = writeln!(
        html,
        "</main>\n<footer><p>{} <a href=\"/v1/indicators?format=csv\">CSV</a> · <a href=\"/v1/indicators\">JSON</a> · <a href=\"/openapi.json\">API</a></p></footer>\n</body>\n</html>",
        lang.t("Alle gepubliceerde cijfers:", "All published figures:")
    );
    html
}

/// Which rounds are public and since when: figures are published only once reviewers of the
/// expert council have released them, with their interpretation where they gave one.
fn release_section(releases: &[Release], lang: Lang) -> String {
    let mut html = String::new();
    let _ = write!(
        html,
        "<section id=\"releases\" aria-labelledby=\"releases-title\"><h2 id=\"releases-title\">{}</h2><p>{}</p>",
        lang.t("Vrijgegeven kwartalen", "Released quarters"),
        lang.t(
            "Cijfers verschijnen hier pas nadat de expertraad ze heeft bekeken en vrijgegeven, zo mogelijk met een duiding. Het vierde kwartaal brengt ook de jaarcijfers.",
            "Figures appear here only after the expert council has reviewed and released them, with an interpretation where it gave one. The fourth quarter also brings the annual figures."
        )
    );
    if releases.is_empty() {
        let _ = writeln!(
            html,
            "<p>{}</p></section>",
            lang.t(
                "Er is nog geen kwartaal vrijgegeven.",
                "No quarter has been released yet."
            )
        );
        return html;
    }
    html.push_str("<ul>");
    for r in releases.iter().rev() {
        let _ = write!(
            html,
            "<li id=\"release-{q}\">{q}: {} {}</li>",
            lang.t("vrijgegeven op", "released on"),
            escape(r.day()),
            q = escape(&r.quarter)
        );
    }
    html.push_str("</ul></section>\n");
    html
}

/// ρ with two decimals (budgets are set in steps of a hundredth or more).
fn rho_text(rho: f64, lang: Lang) -> String {
    let s = format!("{rho:.2}");
    match lang {
        Lang::Nl => s.replace('.', ","),
        Lang::En => s,
    }
}

/// Every provider's spend per data period, as the providers last reported it.
fn budget_section(budgets: &BTreeMap<String, BudgetStatus>, lang: Lang) -> String {
    let mut html = String::new();
    let _ = write!(
        html,
        "<section id=\"budgets\" aria-labelledby=\"budgets-title\"><h2 id=\"budgets-title\">{}</h2><p>{}</p>",
        lang.t("Privacybudget van de aanbieders", "The providers' privacy budgets"),
        lang.t(
            "Elke aanbieder heeft per periode van de gegevens (meestal een jaar) een vast privacybudget ρ. Elk antwoord over die periode gaat ervan af, ook als het jaren later wordt gevraagd; een nieuw kalenderjaar geeft oude gegevens geen nieuw budget.",
            "Each provider has a fixed privacy budget ρ per period of the data (usually a year). Every answer about that period draws on it, even when asked years later; a new calendar year gives old records no new budget."
        )
    );
    if budgets.is_empty() {
        let _ = writeln!(
            html,
            "<p>{}</p></section>",
            lang.t(
                "Nog geen aanbieder heeft zijn budget gemeld.",
                "No provider has reported its budget yet."
            )
        );
        return html;
    }
    let _ = write!(
        html,
        "<table><thead><tr><th scope=\"col\">{}</th><th scope=\"col\">{}</th><th scope=\"col\">{}</th><th scope=\"col\">{}</th><th scope=\"col\">{}</th></tr></thead><tbody>",
        lang.t("Aanbieder", "Provider"),
        lang.t("Periode van de gegevens", "Data period"),
        lang.t("ρ besteed", "ρ spent"),
        lang.t("ρ budget", "ρ budget"),
        lang.t("Antwoorden", "Answers")
    );
    for (node, b) in budgets {
        if b.periods.is_empty() {
            let _ = write!(
                html,
                "<tr><td>{}</td><td>–</td><td>0</td><td>{}</td><td>0</td></tr>",
                escape(node),
                rho_text(b.rho_budget, lang)
            );
        }
        for p in &b.periods {
            let _ = write!(
                html,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                escape(node),
                escape(&p.period),
                rho_text(p.rho_spent, lang),
                rho_text(b.rho_budget, lang),
                p.releases
            );
        }
    }
    html.push_str("</tbody></table></section>\n");
    html
}

fn indicator_block(
    catalog: &Catalog,
    ind: &Indicator,
    recs: &[&Published],
    interpretations: &[Interpretation],
    released_on: &BTreeMap<&str, &str>,
    population: Option<&crate::reference::Source>,
    lang: Lang,
) -> String {
    let title = if lang == Lang::Nl {
        &ind.title.nl
    } else {
        &ind.title.en
    };
    let definition = if lang == Lang::Nl {
        &ind.definition.nl
    } else {
        &ind.definition.en
    };
    let anchor = ind.id.replace('.', "-");
    let s = series(recs);
    let latest_period = recs.iter().map(|r| r.period.as_str()).max().unwrap_or("");
    let mut out = format!(
        "<article id=\"{anchor}\" aria-labelledby=\"{anchor}-h\"><h3 id=\"{anchor}-h\">{}</h3>\n<p>{}</p>\n",
        escape(title),
        escape(definition)
    );
    let latest: Vec<&&Published> = recs.iter().filter(|r| r.period == latest_period).collect();
    if let [only] = latest.as_slice() {
        let _ = writeln!(
            out,
            "<p class=\"latest\">{} {}: <strong>{}</strong> (95%: {} – {}), {} {}/{}{}</p>",
            lang.t("Laatste kwartaal", "Latest quarter"),
            escape(latest_period),
            if only.suppressed {
                lang.t("onderdrukt", "suppressed").to_string()
            } else {
                number(only.estimate, lang)
            },
            number(only.ci_low, lang),
            number(only.ci_high, lang),
            lang.t("aanbieders", "providers"),
            only.providers_reporting,
            only.providers_total,
            if only.complete {
                ""
            } else {
                lang.t(" — onvolledig", " — incomplete")
            }
        );
    } else if let Some(first) = latest.first() {
        let _ = writeln!(
            out,
            "<p class=\"latest\">{} {}: {} {}/{}{}</p>",
            lang.t("Laatste kwartaal", "Latest quarter"),
            escape(latest_period),
            lang.t("aanbieders", "providers"),
            first.providers_reporting,
            first.providers_total,
            lang.t("; zie de tabel per groep", "; see the table per group")
        );
    }
    let _ = writeln!(
        out,
        "<figure>{}<figcaption><details><summary>{}</summary>{}</details></figcaption></figure>",
        chart(&anchor, title, &s, lang),
        lang.t("Tabel met de cijfers", "Table of the numbers"),
        table(&s, lang)
    );
    let _ = writeln!(out, "<p>{}</p>", escape(&cost_words(ind, catalog, lang)));
    // A per-capita figure's denominator is public data, cited as its licence asks.
    if let (policies::Body::Derived(policies::Derived::PerCapita { .. }), Some(src)) =
        (&ind.body, population)
    {
        let _ = writeln!(
            out,
            "<p class=\"bron\">{}: {}, {}, {}</p>",
            lang.t("Bevolking", "Population"),
            escape(&src.source),
            escape(&src.retrieved),
            escape(&src.licence)
        );
    }
    // Each released period of this indicator, newest first: the council's reading, or that
    // there is none.
    let mut periods: Vec<&str> = recs.iter().map(|r| r.period.as_str()).collect();
    periods.sort_unstable_by(|a, b| b.cmp(a));
    periods.dedup();
    let mut without: Vec<&str> = Vec::new();
    for period in periods {
        let reading = interpretations
            .iter()
            .find(|i| i.indicator == ind.id && i.period == period)
            .and_then(|i| match lang {
                Lang::Nl => i.nl.as_ref().or(i.en.as_ref()),
                Lang::En => i.en.as_ref().or(i.nl.as_ref()),
            });
        match reading {
            Some(text) => {
                let _ = writeln!(
                    out,
                    "<blockquote class=\"duiding\"><p><strong>{} ({}, {} {}):</strong> {}</p></blockquote>",
                    lang.t("Duiding", "Interpretation"),
                    escape(period),
                    lang.t("vrijgegeven op", "released on"),
                    escape(released_on.get(period).copied().unwrap_or("?")),
                    escape(text)
                );
            }
            None => without.push(period),
        }
    }
    if !without.is_empty() {
        let _ = writeln!(
            out,
            "<p class=\"no-duiding\">{} {}.</p>",
            lang.t(
                "De expertraad gaf (nog) geen duiding bij",
                "The expert council gave no interpretation (yet) for"
            ),
            escape(&without.join(", "))
        );
    }
    let _ = writeln!(
        out,
        "<p>{}: <a href=\"/v1/indicators?indicator={id}&amp;format=csv\" download=\"{id}.csv\">CSV</a> · <a href=\"/v1/indicators?indicator={id}\" download=\"{id}.json\">JSON</a></p></article>",
        lang.t("Downloaden", "Download"),
        id = escape(&ind.id)
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(period: &str, estimate: f64, group: &[(&str, &str)]) -> Published {
        Published {
            indicator: "x".into(),
            period: period.into(),
            group: group
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            estimate: Some(estimate),
            ci_low: Some(estimate - 5.0),
            ci_high: Some(estimate + 5.0),
            suppressed: false,
            providers_reporting: 10,
            providers_total: 11,
            complete: false,
            rho: 0.05,
        }
    }

    #[test]
    fn chart_has_a_band_and_a_line_per_group_and_a_table_with_every_number() {
        let records = [
            rec("2024Q1", 100.0, &[("sex", "M")]),
            rec("2024Q2", 120.0, &[("sex", "M")]),
            rec("2024Q1", 80.0, &[("sex", "V")]),
            rec("2024Q2", 70.5, &[("sex", "V")]),
        ];
        let refs: Vec<&Published> = records.iter().collect();
        let s = series(&refs);
        assert_eq!(s.len(), 2);
        let svg = chart("x", "X <&>", &s, Lang::En);
        assert_eq!(svg.matches("<polygon").count(), 2);
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert!(svg.contains("X &lt;&amp;&gt;"));
        let t = table(&s, Lang::Nl);
        for n in ["100", "120", "80", "70,5", "65,5 – 75,5", "10/11"] {
            assert!(t.contains(n), "{n} missing from {t}");
        }
    }

    #[test]
    fn the_budget_section_lists_every_provider_and_data_period() {
        let status = |node: &str, periods: &[(&str, f64, u64)]| policies::wire::BudgetStatus {
            node_id: node.into(),
            budget_period: "2024".into(),
            granularity: "year".into(),
            rho_budget: 12.0,
            rho_spent: 0.0,
            rho_remaining: 12.0,
            releases: 0,
            delta: 1e-6,
            epsilon_spent: 0.0,
            periods: periods
                .iter()
                .map(|(p, spent, n)| policies::wire::PeriodBudget {
                    period: p.to_string(),
                    rho_spent: *spent,
                    rho_remaining: 12.0 - spent,
                    releases: *n,
                    epsilon_spent: 0.0,
                })
                .collect(),
            rho_spent_total: 0.0,
            lifetime_rho: None,
        };
        let mut budgets = BTreeMap::new();
        budgets.insert(
            "P01".to_string(),
            status("P01", &[("2023", 1.25, 40), ("2024", 2.5, 72)]),
        );
        budgets.insert("P02".to_string(), status("P02", &[]));
        let html = budget_section(&budgets, Lang::Nl);
        assert!(
            html.contains("<td>P01</td><td>2023</td><td>1,25</td><td>12,00</td><td>40</td>"),
            "{html}"
        );
        assert!(
            html.contains("<td>P01</td><td>2024</td><td>2,50</td>"),
            "{html}"
        );
        assert!(html.contains("<td>P02</td><td>–</td><td>0</td>"), "{html}");
        let en = budget_section(&budgets, Lang::En);
        assert!(en.contains("<td>2023</td><td>1.25</td>"), "{en}");
        assert!(budget_section(&BTreeMap::new(), Lang::En).contains("No provider has reported"));
    }

    #[test]
    fn axis_steps_are_round_and_cover_the_values() {
        assert_eq!(axis(0.0, 535.0), (0.0, 600.0, 200.0));
        assert_eq!(axis(-110.0, 275.0), (-200.0, 300.0, 100.0));
        assert_eq!(axis(0.0, 0.37), (0.0, 0.4, 0.1));
        assert_eq!(axis(0.0, 0.0), (0.0, 1.0, 0.25));
        for (lo, hi) in [(0.0, 7.0), (-3.5, 1234.0), (0.0, 1e6), (0.12, 0.9)] {
            let (a, b, step) = axis(lo, hi);
            assert!(
                a <= lo && b >= hi && step > 0.0,
                "{lo}..{hi} → {a}..{b} by {step}"
            );
            let n = (b - a) / step;
            assert!(
                (n - n.round()).abs() < 1e-9 && (2.0..=8.0).contains(&n.round()),
                "{n} steps"
            );
        }
    }

    /// WCAG 2 contrast ratio of two `#rrggbb` / `#rgb` colours.
    fn contrast(a: &str, b: &str) -> f64 {
        let luminance = |c: &str| {
            let hex = c.trim_start_matches('#');
            let hex: String = if hex.len() == 3 {
                hex.chars().flat_map(|c| [c, c]).collect()
            } else {
                hex.to_string()
            };
            let channel = |i: usize| {
                let v = u8::from_str_radix(&hex[i..i + 2], 16).expect("hex colour") as f64 / 255.0;
                if v <= 0.04045 {
                    v / 12.92
                } else {
                    ((v + 0.055) / 1.055).powf(2.4)
                }
            };
            0.2126 * channel(0) + 0.7152 * channel(2) + 0.0722 * channel(4)
        };
        let (x, y) = (luminance(a), luminance(b));
        (x.max(y) + 0.05) / (x.min(y) + 0.05)
    }

    #[test]
    fn colours_have_sufficient_contrast() {
        assert!((contrast("#000", "#fff") - 21.0).abs() < 1e-9);
        // Text (body, links, axis labels) on the page and on the interpretation's background:
        // WCAG AA for normal text, 4.5:1.
        for text in ["#1a1a1a", "#0b4a8b", "#333"] {
            for background in ["#fff", "#f3f6fa"] {
                let c = contrast(text, background);
                assert!(c >= 4.5, "{text} on {background}: {c:.2}");
            }
        }
        // Chart lines and points, and the focus outline: 3:1 for graphical objects; the series
        // colours meet 4.5:1 so they also serve as text.
        for colour in COLOURS {
            let c = contrast(colour, "#fff");
            assert!(c >= 4.5, "series {colour}: {c:.2}");
        }
        assert!(contrast("#c25100", "#fff") >= 3.0);
    }

    #[test]
    fn axis_labels_carry_the_decimals_of_the_step() {
        assert_eq!(axis_label(0.25, 0.25, Lang::En), "0.25");
        assert_eq!(axis_label(0.5, 0.25, Lang::Nl), "0,50");
        assert_eq!(axis_label(-0.0, 100.0, Lang::En), "0");
        assert_eq!(axis_label(300.0, 100.0, Lang::En), "300");
        assert_eq!(axis_label(0.30000000000000004, 0.1, Lang::En), "0.3");
    }

    #[test]
    fn a_chart_with_only_suppressed_values_says_so() {
        let mut r = rec("2024Q1", 0.0, &[]);
        (r.estimate, r.ci_low, r.ci_high) = (None, None, None);
        r.suppressed = true;
        let recs = [&r];
        let svg = chart("x", "t", &series(&recs), Lang::En);
        assert!(svg.contains("every figure is suppressed"), "{svg}");
        assert!(!svg.contains("class=\"band\""));
    }

    #[test]
    fn text_is_escaped() {
        assert_eq!(
            escape("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
    }
}
