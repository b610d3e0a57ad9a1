//! The loss curve of a run as a PNG (`OUT/loss.png`), drawn from `OUT/loss.csv`: training
//! loss per optimizer step and validation loss at each validation, against the step.
//!
//! Drawn from the CSV, not from memory, so that a resumed run's chart covers the whole run.
//! The font (DejaVu Sans Mono, `assets/`, Bitstream Vera licence) is compiled in: plotters'
//! default text path needs fontconfig, which a training box need not have.

use std::path::Path;
use std::sync::Once;

use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;
use plotters::style::{FontStyle, register_font};

use crate::error::TrainError;

/// The family name the embedded font is registered under.
const FONT: &str = "hymba-mono";
/// Chart size in pixels.
pub const SIZE: (u32, u32) = (1000, 600);
/// Colour of the training curve.
pub const TRAIN_COLOUR: RGBColor = RGBColor(31, 119, 180);
/// Colour of the validation points and curve.
pub const VALID_COLOUR: RGBColor = RGBColor(214, 39, 40);

/// A curve: `(step, loss)` points.
pub type Curve = Vec<(f64, f64)>;

/// The two curves of a `loss.csv` (`step,split,loss,…`): `(train, valid)`. Lines that do not
/// parse, and non-finite losses, are left out.
pub fn read_loss_csv(csv: &str) -> (Curve, Curve) {
    let (mut train, mut valid) = (Vec::new(), Vec::new());
    for line in csv.lines().skip(1) {
        let mut fields = line.split(',');
        let (Some(step), Some(split), Some(loss)) = (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        let (Ok(step), Ok(loss)) = (step.parse::<f64>(), loss.parse::<f64>()) else {
            continue;
        };
        if !loss.is_finite() {
            continue;
        }
        match split {
            "train" => train.push((step, loss)),
            "valid" => valid.push((step, loss)),
            _ => {}
        }
    }
    (train, valid)
}

/// Draws `csv_path`'s curves into `png_path`, titled `title`. A CSV with no training step
/// yet draws nothing and is not an error.
pub fn write_loss_png(csv_path: &Path, png_path: &Path, title: &str) -> Result<(), TrainError> {
    let csv = std::fs::read_to_string(csv_path).map_err(|e| TrainError::io(csv_path, e))?;
    let (train, valid) = read_loss_csv(&csv);
    if train.is_empty() {
        return Ok(());
    }
    draw(&train, &valid, png_path, title).map_err(|e| TrainError::io(png_path, e))
}

fn register_embedded_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let bytes: &'static [u8] = include_bytes!("../assets/DejaVuSansMono.ttf");
        // The bytes are a valid TTF, checked by the tests; a failure would only cost the text.
        let _ = register_font(FONT, FontStyle::Normal, bytes);
    });
}

/// The chart's coordinate system: steps × loss.
type LossChart<'a> =
    ChartContext<'a, BitMapBackend<'a>, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

/// One labelled curve, with its legend entry.
fn curve(
    chart: &mut LossChart<'_>,
    points: &[(f64, f64)],
    colour: RGBColor,
    label: &str,
) -> Result<(), Box<dyn std::error::Error>> {
    let style = colour.stroke_width(2);
    chart
        .draw_series(LineSeries::new(points.iter().copied(), style))?
        .label(label)
        .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], style));
    Ok(())
}

fn draw(
    train: &[(f64, f64)],
    valid: &[(f64, f64)],
    path: &Path,
    title: &str,
) -> Result<(), Box<dyn std::error::Error>> {
    register_embedded_font();
    let all = || train.iter().chain(valid);
    let x_max = all().map(|p| p.0).fold(1.0, f64::max);
    let x_min = all().map(|p| p.0).fold(x_max, f64::min).min(x_max - 1.0);
    let y_max = all().map(|p| p.1).fold(f64::MIN, f64::max);
    let y_min = all().map(|p| p.1).fold(f64::MAX, f64::min);
    let pad = ((y_max - y_min) * 0.05).max(1e-3);

    let root = BitMapBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, (FONT, 24))
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(64)
        .build_cartesian_2d(x_min..x_max, (y_min - pad)..(y_max + pad))?;
    chart
        .configure_mesh()
        .x_desc("optimizer step")
        .y_desc("loss (nats/token)")
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| format!("{y:.2}"))
        .label_style((FONT, 15))
        .axis_desc_style((FONT, 17))
        .light_line_style(WHITE.mix(0.0))
        .draw()?;
    curve(&mut chart, train, TRAIN_COLOUR, "train")?;
    if !valid.is_empty() {
        curve(&mut chart, valid, VALID_COLOUR, "validation")?;
        chart.draw_series(
            valid
                .iter()
                .map(|&p| Circle::new(p, 4, VALID_COLOUR.filled())),
        )?;
    }
    chart
        .configure_series_labels()
        .label_font((FONT, 16))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}
