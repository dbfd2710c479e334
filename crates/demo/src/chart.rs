//! The report's charts, SVG drawn with plotters: success rate and latency second by second,
//! naive against protected, the fault window shaded.

use std::io;
use std::path::Path;

use plotters::coord::Shift;
use plotters::prelude::*;

use crate::report::ScenarioResult;
use crate::stats::Second;

const NAIVE: RGBColor = RGBColor(214, 39, 40);
const PROTECTED: RGBColor = RGBColor(31, 119, 180);
const WHOLE: RGBColor = RGBColor(140, 190, 230);
const FAULT: RGBColor = RGBColor(255, 170, 80);
const SIZE: (u32, u32) = (760, 320);
/// The width of the key beside the plot: beside it, not over it, where it would hide lines.
const KEY_WIDTH: u32 = 200;

/// How a series looks in the key.
#[derive(Clone, Copy)]
enum Sample {
    Line(RGBColor, u32),
    Band(RGBColor),
}

/// The file names of a scenario's two charts: success, latency.
pub(crate) fn names(scenario: &str) -> [String; 2] {
    [
        format!("{scenario}-success.svg"),
        format!("{scenario}-latency.svg"),
    ]
}

/// Writes the scenario's two charts into `dir`.
pub(crate) fn write(dir: &Path, result: &ScenarioResult) -> io::Result<()> {
    let [success, latency] = names(result.scenario.name());
    std::fs::write(
        dir.join(success),
        success_chart(result).map_err(io::Error::other)?,
    )?;
    std::fs::write(
        dir.join(latency),
        latency_chart(result).map_err(io::Error::other)?,
    )?;
    Ok(())
}

type Drawn = Result<String, String>;

fn points(seconds: &[Second], value: impl Fn(&Second) -> f64) -> Vec<(f64, f64)> {
    seconds
        .iter()
        .filter(|second| second.requests > 0)
        .map(|second| (f64::from(second.at) + 0.5, value(second)))
        .collect()
}

fn length(result: &ScenarioResult) -> f64 {
    let seconds = result
        .naive
        .seconds
        .len()
        .max(result.protected.seconds.len());
    (seconds as f64).max(result.timing.duration.as_secs_f64())
}

fn success_chart(result: &ScenarioResult) -> Drawn {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let (plot, key_area) = root.split_horizontally(SIZE.0 - KEY_WIDTH);
        let mut chart = ChartBuilder::on(&plot)
            .caption(
                format!(
                    "{}: successful requests (%), by the second they were sent",
                    result.scenario.name()
                ),
                ("sans-serif", 16),
            )
            .margin(12)
            .x_label_area_size(32)
            .y_label_area_size(44)
            .build_cartesian_2d(0f64..length(result), 0f64..105f64)
            .map_err(|e| e.to_string())?;
        chart
            .configure_mesh()
            .x_desc("seconds")
            .y_desc("%")
            .y_labels(6)
            .draw()
            .map_err(|e| e.to_string())?;
        shade(&mut chart, result, 0.0, 100.0)?;
        let series = [
            (
                "naive: successful",
                NAIVE,
                points(&result.naive.seconds, |s| s.success_rate() * 100.0),
            ),
            (
                "protected: successful,\nwhole or with stand-ins",
                PROTECTED,
                points(&result.protected.seconds, |s| s.success_rate() * 100.0),
            ),
            (
                "protected: whole pages",
                WHOLE,
                points(&result.protected.seconds, |s| {
                    if s.requests == 0 {
                        100.0
                    } else {
                        (s.succeeded - s.fallback) as f64 * 100.0 / s.requests as f64
                    }
                }),
            ),
        ];
        let mut entries = Vec::new();
        for (label, color, points) in series {
            chart
                .draw_series(LineSeries::new(points, color.stroke_width(2)))
                .map_err(|e| e.to_string())?;
            entries.push((label, Sample::Line(color, 2)));
        }
        entries.push(("fault window", Sample::Band(FAULT)));
        key(&key_area, &entries)?;
        root.present().map_err(|e| e.to_string())?;
    }
    Ok(svg)
}

fn latency_chart(result: &ScenarioResult) -> Drawn {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let (plot, key_area) = root.split_horizontally(SIZE.0 - KEY_WIDTH);
        // Up to 10 s (the client's timeout), and a little room above it.
        let top = 20_000f64;
        let mut chart = ChartBuilder::on(&plot)
            .caption(
                format!(
                    "{}: latency (ms, log scale), p50 and p99 of each second",
                    result.scenario.name()
                ),
                ("sans-serif", 16),
            )
            .margin(12)
            .x_label_area_size(32)
            .y_label_area_size(56)
            .build_cartesian_2d(0f64..length(result), (1f64..top).log_scale())
            .map_err(|e| e.to_string())?;
        chart
            .configure_mesh()
            .x_desc("seconds")
            .y_desc("ms")
            .draw()
            .map_err(|e| e.to_string())?;
        shade(&mut chart, result, 1.0, 10_000.0)?;
        let floor = |ms: f64| ms.max(1.0);
        let series = [
            (
                "naive p99",
                NAIVE,
                3,
                points(&result.naive.seconds, |s| floor(s.p99_ms)),
            ),
            (
                "naive p50",
                NAIVE,
                1,
                points(&result.naive.seconds, |s| floor(s.p50_ms)),
            ),
            (
                "protected p99",
                PROTECTED,
                3,
                points(&result.protected.seconds, |s| floor(s.p99_ms)),
            ),
            (
                "protected p50",
                PROTECTED,
                1,
                points(&result.protected.seconds, |s| floor(s.p50_ms)),
            ),
        ];
        let mut entries = Vec::new();
        for (label, color, width, points) in series {
            chart
                .draw_series(LineSeries::new(points, color.stroke_width(width)))
                .map_err(|e| e.to_string())?;
            entries.push((label, Sample::Line(color, width)));
        }
        entries.push(("fault window", Sample::Band(FAULT)));
        key(&key_area, &entries)?;
        root.present().map_err(|e| e.to_string())?;
    }
    Ok(svg)
}

/// The planned fault window, behind the lines.
fn shade<'a, Y>(
    chart: &mut ChartContext<
        'a,
        SVGBackend<'a>,
        Cartesian2d<plotters::coord::types::RangedCoordf64, Y>,
    >,
    result: &ScenarioResult,
    bottom: f64,
    top: f64,
) -> Result<(), String>
where
    Y: Ranged<ValueType = f64>,
{
    let (start, end) = (
        result.timing.fault_start.as_secs_f64(),
        result.timing.fault_end.as_secs_f64(),
    );
    chart
        .draw_series(std::iter::once(Rectangle::new(
            [(start, bottom), (end, top)],
            FAULT.mix(0.25).filled(),
        )))
        .map_err(|e| e.to_string())?;
    Ok(())
}

/// The key, in its own area beside the plot: a sample of each series and its name (a name may
/// hold a line break).
fn key(
    area: &DrawingArea<SVGBackend<'_>, Shift>,
    entries: &[(&str, Sample)],
) -> Result<(), String> {
    let font = ("sans-serif", 12).into_font().color(&BLACK);
    let mut y = 44;
    for (label, sample) in entries {
        match *sample {
            Sample::Line(color, width) => area.draw(&PathElement::new(
                vec![(8, y), (28, y)],
                color.stroke_width(width),
            )),
            Sample::Band(color) => area.draw(&Rectangle::new(
                [(8, y - 5), (28, y + 5)],
                color.mix(0.4).filled(),
            )),
        }
        .map_err(|e| e.to_string())?;
        for line in label.split('\n') {
            area.draw(&Text::new(line.to_owned(), (36, y - 7), font.clone()))
                .map_err(|e| e.to_string())?;
            y += 15;
        }
        y += 8;
    }
    Ok(())
}
