//! Charts as data, drawn on demand to SVG (inline display) or PNG (files).

use std::borrow::Borrow;
use std::path::Path;

use plotters::coord::ranged1d::SegmentValue;
use plotters::coord::Shift;
use plotters::prelude::*;

use super::inline::{emit, extension};
use super::{ensure_fonts, plot_error};
use crate::error::{Error, Result};
use crate::files::write_atomically;
use crate::train::{History, SeedRuns, Spread};

/// A named line: (x, y) points, and optionally a band around them.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// Legend entry.
    pub name: String,
    /// Points in x order.
    pub points: Vec<(f64, f64)>,
    /// For each point, the (lowest, highest) value it summarises — several seeds' range —
    /// drawn as a shaded band; empty for a plain line.
    pub band: Vec<(f64, f64)>,
}

impl Series {
    /// A series from a name and points.
    pub fn new(name: impl Into<String>, points: Vec<(f64, f64)>) -> Series {
        Series {
            name: name.into(),
            points,
            band: Vec::new(),
        }
    }

    /// Validation accuracy against step, from a training run's history.
    pub fn validation_accuracy(name: impl Into<String>, history: &History) -> Series {
        Series::against_step(name, history, &history.validation_accuracy)
    }

    /// The mean test accuracy of several seeds' runs against step, with their range as a
    /// band.
    pub fn test_accuracy_of(name: impl Into<String>, runs: &SeedRuns) -> Series {
        Series::mean_of(name, runs, |h| &h.test_accuracy)
    }

    /// The mean validation accuracy of several seeds' runs against step, with their range
    /// as a band.
    pub fn validation_accuracy_of(name: impl Into<String>, runs: &SeedRuns) -> Series {
        Series::mean_of(name, runs, |h| &h.validation_accuracy)
    }

    fn mean_of(
        name: impl Into<String>,
        runs: &SeedRuns,
        values: impl Fn(&History) -> &Vec<f32>,
    ) -> Series {
        let Some(first) = runs.histories.first() else {
            return Series::new(name, Vec::new());
        };
        let (mut points, mut band) = (Vec::new(), Vec::new());
        for (k, &step) in first.step.iter().enumerate() {
            let at: Vec<f64> = runs
                .histories
                .iter()
                .filter_map(|h| values(h).get(k).map(|&v| f64::from(v)))
                .collect();
            if at.len() != runs.histories.len() {
                break;
            }
            let spread = Spread::of(&at);
            points.push((step as f64, spread.mean));
            band.push((spread.min, spread.max));
        }
        Series {
            name: name.into(),
            points,
            band,
        }
    }

    /// Test accuracy against step, from a training run's history.
    ///
    /// ```
    /// use flowers_kit::plot::Series;
    /// use flowers_kit::train::History;
    /// let history = History { step: vec![0, 10], test_accuracy: vec![0.2, 0.7], ..Default::default() };
    /// assert_eq!(Series::test_accuracy("sgd", &history).points, vec![(0.0, 0.2f32 as f64), (10.0, 0.7f32 as f64)]);
    /// ```
    pub fn test_accuracy(name: impl Into<String>, history: &History) -> Series {
        Series::against_step(name, history, &history.test_accuracy)
    }

    /// Test loss (cross-entropy) against step.
    pub fn test_loss(name: impl Into<String>, history: &History) -> Series {
        Series::against_step(name, history, &history.test_loss)
    }

    /// Accuracy on each step's training batch against step.
    pub fn train_accuracy(name: impl Into<String>, history: &History) -> Series {
        Series::against_step(name, history, &history.train_accuracy)
    }

    /// The same line with every x multiplied by `factor`: for example steps × batch size,
    /// to compare runs by how many photos they have seen rather than by step.
    ///
    /// ```
    /// use flowers_kit::plot::Series;
    /// let steps = Series::new("batch 10", vec![(0.0, 0.2), (100.0, 0.8)]);
    /// assert_eq!(steps.scale_x(10.0).points, vec![(0.0, 0.2), (1000.0, 0.8)]);
    /// ```
    pub fn scale_x(mut self, factor: f64) -> Series {
        for point in &mut self.points {
            point.0 *= factor;
        }
        self
    }

    fn against_step(name: impl Into<String>, history: &History, values: &[f32]) -> Series {
        let points = history
            .step
            .iter()
            .zip(values)
            .map(|(&step, &value)| (step as f64, f64::from(value)))
            .collect();
        Series::new(name, points)
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Kind {
    Lines {
        title: String,
        x_label: String,
        y_label: String,
        series: Vec<Series>,
    },
    Heatmap {
        title: String,
        x_label: String,
        y_label: String,
        columns: Vec<String>,
        rows: Vec<String>,
        values: Vec<Vec<f64>>,
    },
    Bars {
        title: String,
        value_label: String,
        items: Vec<(String, f64)>,
        /// Each bar's (lowest, highest) value, drawn as a whisker; empty for none.
        ranges: Vec<(f64, f64)>,
    },
    Scatter {
        title: String,
        x_label: String,
        y_label: String,
        points: Vec<(String, f64, f64)>,
        log_x: bool,
    },
    SideBySide(Vec<Chart>),
    /// Photos as points coloured by class (the feature space's map).
    ClassPoints {
        title: String,
        x_label: String,
        y_label: String,
        classes: Vec<String>,
        points: Vec<ClassPoint>,
        /// Legend entries for the kinds of point: (train, test, mistake).
        kinds: [String; 3],
    },
}

/// One photo on a [`Kind::ClassPoints`] chart.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct ClassPoint {
    pub x: f64,
    pub y: f64,
    /// Index into the chart's classes: the point's colour.
    pub class: usize,
    /// A training photo (small and faint), a test photo, or a test photo the classifier got
    /// wrong (crossed).
    pub kind: PointKind,
}

/// What a [`ClassPoint`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PointKind {
    Train,
    Test,
    Mistake,
}

/// A chart: displays inline in evcxr (SVG) and saves as `.svg` or `.png`.
///
/// ```
/// use flowers_kit::plot::{Chart, Series};
/// let chart = Chart::lines("Accuracy", "step", "accuracy",
///     vec![Series::new("lr 0.01", vec![(0.0, 0.2), (10.0, 0.6), (20.0, 0.8)])]);
/// assert!(chart.svg()?.starts_with("<svg"));
/// # Ok::<(), flowers_kit::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Chart {
    kind: Kind,
    width: u32,
    height: u32,
}

const COLORS: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
];

impl Chart {
    /// Several curves on one pair of axes (training curves, sweeps, optimizers). `series`
    /// may be a vector or a borrowed slice (`&curves`): a notebook keeps its own.
    pub fn lines(
        title: &str,
        x_label: &str,
        y_label: &str,
        series: impl IntoIterator<Item = impl Borrow<Series>>,
    ) -> Chart {
        Chart {
            kind: Kind::Lines {
                title: title.into(),
                x_label: x_label.into(),
                y_label: y_label.into(),
                series: series.into_iter().map(|s| s.borrow().clone()).collect(),
            },
            width: 640,
            height: 420,
        }
    }

    /// A grid of values with row and column names, each cell annotated (confusion matrix,
    /// learning rate × batch size accuracy). Names are anything printable (`&BATCH_SIZES`);
    /// `values` is one row per row name, vectors or slices (`&grid`).
    pub fn heatmap(
        title: &str,
        x_label: &str,
        y_label: &str,
        columns: impl IntoIterator<Item = impl ToString>,
        rows: impl IntoIterator<Item = impl ToString>,
        values: impl IntoIterator<Item = impl AsRef<[f64]>>,
    ) -> Result<Chart> {
        let columns: Vec<String> = columns.into_iter().map(|c| c.to_string()).collect();
        let rows: Vec<String> = rows.into_iter().map(|r| r.to_string()).collect();
        let values: Vec<Vec<f64>> = values.into_iter().map(|r| r.as_ref().to_vec()).collect();
        if values.len() != rows.len() || values.iter().any(|r| r.len() != columns.len()) {
            return Err(Error::InvalidArgument(format!(
                "heatmap values must be {} rows of {} columns",
                rows.len(),
                columns.len()
            )));
        }
        let size = 160 + 70 * columns.len().max(rows.len()) as u32;
        Ok(Chart {
            kind: Kind::Heatmap {
                title: title.into(),
                x_label: x_label.into(),
                y_label: y_label.into(),
                columns,
                rows,
                values,
            },
            width: size.max(420) + 60,
            height: size.max(420),
        })
    }

    /// Horizontal bars, one per item, in the order given (top-k probabilities, results).
    /// `items` may be a vector or a borrowed slice (`&results`).
    pub fn bars(
        title: &str,
        value_label: &str,
        items: impl IntoIterator<Item = impl Borrow<(String, f64)>>,
    ) -> Chart {
        let items: Vec<(String, f64)> = items.into_iter().map(|i| i.borrow().clone()).collect();
        let height = 110 + 44 * items.len() as u32;
        Chart {
            kind: Kind::Bars {
                title: title.into(),
                value_label: value_label.into(),
                items,
                ranges: Vec::new(),
            },
            width: 560,
            height,
        }
    }

    /// Bars of several runs' means, each with a whisker from the lowest to the highest run
    /// (several seeds of one setting: [`crate::train::SeedRuns`]).
    pub fn bars_with_range(
        title: &str,
        value_label: &str,
        items: impl IntoIterator<Item = impl Borrow<(String, Spread)>>,
    ) -> Chart {
        let items: Vec<(String, Spread)> = items.into_iter().map(|i| i.borrow().clone()).collect();
        let ranges = items.iter().map(|(_, s)| (s.min, s.max)).collect();
        let mut chart = Chart::bars(
            title,
            value_label,
            items
                .iter()
                .map(|(name, s)| (name.clone(), s.mean))
                .collect::<Vec<_>>(),
        );
        if let Kind::Bars { ranges: slot, .. } = &mut chart.kind {
            *slot = ranges;
        }
        chart
    }

    /// Named points, each labelled beside its marker (models by speed and accuracy): one
    /// point per item, so nothing depends on telling colours apart. `log_x` spaces the x
    /// axis logarithmically, for values that span orders of magnitude (photos per second);
    /// points with x ≤ 0 cannot be placed on it and are left out.
    pub fn scatter(
        title: &str,
        x_label: &str,
        y_label: &str,
        points: impl IntoIterator<Item = impl Borrow<(String, f64, f64)>>,
        log_x: bool,
    ) -> Chart {
        Chart {
            kind: Kind::Scatter {
                title: title.into(),
                x_label: x_label.into(),
                y_label: y_label.into(),
                points: points.into_iter().map(|p| p.borrow().clone()).collect(),
                log_x,
            },
            width: 720,
            height: 460,
        }
    }

    /// Photos as points coloured by class, training photos small and faint, test photos
    /// larger, the test mistakes crossed (the feature space, `plot::feature_space`).
    pub(crate) fn class_points(
        (title, axes, kinds): super::language::MapTexts,
        classes: Vec<String>,
        points: Vec<ClassPoint>,
    ) -> Chart {
        Chart {
            kind: Kind::ClassPoints {
                title,
                x_label: axes.0,
                y_label: axes.1,
                classes,
                points,
                kinds,
            },
            width: 720,
            height: 520,
        }
    }

    /// Charts next to each other in one figure.
    pub fn side_by_side(charts: Vec<Chart>) -> Chart {
        let width = charts.iter().map(|c| c.width).sum();
        let height = charts.iter().map(|c| c.height).max().unwrap_or(400);
        Chart {
            kind: Kind::SideBySide(charts),
            width,
            height,
        }
    }

    /// Width and height in pixels.
    pub fn size(&self) -> (u32, u32) {
        (self.width, self.height)
    }

    /// Sets the size in pixels.
    pub fn with_size(mut self, width: u32, height: u32) -> Chart {
        self.width = width.max(100);
        self.height = height.max(100);
        self
    }

    /// The chart as an SVG document.
    pub fn svg(&self) -> Result<String> {
        ensure_fonts();
        let mut out = String::new();
        {
            let root =
                SVGBackend::with_string(&mut out, (self.width, self.height)).into_drawing_area();
            self.draw(&root)?;
            root.present().map_err(plot_error)?;
        }
        Ok(out)
    }

    /// The chart as PNG bytes.
    pub fn png(&self) -> Result<Vec<u8>> {
        ensure_fonts();
        let (w, h) = (self.width, self.height);
        let mut buffer = vec![255u8; (w * h * 3) as usize];
        {
            let root = BitMapBackend::with_buffer(&mut buffer, (w, h)).into_drawing_area();
            self.draw(&root)?;
            root.present().map_err(plot_error)?;
        }
        super::pictures::encode_png(w, h, buffer)
    }

    /// Saves as SVG or PNG, by the file's extension.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let bytes = match extension(path).as_deref() {
            Some("svg") => self.svg()?.into_bytes(),
            Some("png") => self.png()?,
            other => {
                return Err(Error::InvalidArgument(format!(
                    "cannot save a chart as '.{}' ({}): use .svg or .png",
                    other.unwrap_or(""),
                    path.display()
                )))
            }
        };
        write_atomically(path, &bytes)
    }

    /// Shows the chart inline in an evcxr notebook (SVG).
    pub fn evcxr_display(&self) {
        match self.svg() {
            Ok(svg) => emit("image/svg+xml", &svg),
            Err(e) => println!("Error: {e}"),
        }
    }

    fn draw<DB: DrawingBackend>(&self, area: &DrawingArea<DB, Shift>) -> Result<()> {
        area.fill(&WHITE).map_err(plot_error)?;
        match &self.kind {
            Kind::Lines {
                title,
                x_label,
                y_label,
                series,
            } => draw_lines(area, title, x_label, y_label, series),
            Kind::Heatmap {
                title,
                x_label,
                y_label,
                columns,
                rows,
                values,
            } => draw_heatmap(area, title, x_label, y_label, columns, rows, values),
            Kind::Bars {
                title,
                value_label,
                items,
                ranges,
            } => draw_bars(area, title, value_label, items, ranges),
            Kind::Scatter {
                title,
                x_label,
                y_label,
                points,
                log_x,
            } => draw_scatter(area, title, x_label, y_label, points, *log_x),
            Kind::ClassPoints {
                title,
                x_label,
                y_label,
                classes,
                points,
                kinds,
            } => draw_class_points(area, title, (x_label, y_label), classes, points, kinds),
            Kind::SideBySide(charts) => {
                let mut rest = area.clone();
                for chart in charts {
                    let (left, right) = rest.split_horizontally(chart.width);
                    chart.draw(&left)?;
                    rest = right;
                }
                Ok(())
            }
        }
    }
}

/// `n` segments: plotters' `(0..m).into_segmented()` has `m + 1` of them.
fn segments(
    n: i32,
) -> plotters::coord::ranged1d::SegmentedCoord<plotters::coord::types::RangedCoordi32> {
    (0..(n - 1).max(0)).into_segmented()
}

fn span(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    });
    if !lo.is_finite() || !hi.is_finite() {
        return (0.0, 1.0);
    }
    if (hi - lo).abs() < 1e-12 {
        return (lo - 0.5, hi + 0.5);
    }
    let pad = (hi - lo) * 0.05;
    (lo - pad, hi + pad)
}

fn draw_lines<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
) -> Result<()> {
    let finite = |p: &&(f64, f64)| p.0.is_finite() && p.1.is_finite();
    let (x0, x1) = span(
        series
            .iter()
            .flat_map(|s| s.points.iter().filter(finite).map(|p| p.0)),
    );
    let (y0, y1) = span(
        series
            .iter()
            .flat_map(|s| s.points.iter().filter(finite).map(|p| p.1))
            .chain(
                series
                    .iter()
                    .flat_map(|s| s.band.iter().flat_map(|&(lo, hi)| [lo, hi]))
                    .filter(|v| v.is_finite()),
            ),
    );
    let mut chart = frame(area, title, 20)
        .build_cartesian_2d(x0..x1, y0..y1)
        .map_err(plot_error)?;
    // Steps and batch sizes are whole numbers: no "10.0" on their axis.
    let whole = series
        .iter()
        .flat_map(|s| s.points.iter())
        .all(|p| p.0.fract() == 0.0);
    let x_tick = |v: &f64| {
        if whole {
            format!("{v:.0}")
        } else {
            format!("{v}")
        }
    };
    chart
        .configure_mesh()
        .x_desc(x_label)
        .y_desc(y_label)
        .x_label_formatter(&x_tick)
        .light_line_style(RGBColor(235, 235, 235))
        .draw()
        .map_err(plot_error)?;
    for (i, s) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        if s.band.len() == s.points.len() && !s.band.is_empty() {
            // The range as a shaded polygon: along the highs, back along the lows.
            let outline: Vec<(f64, f64)> = s
                .points
                .iter()
                .zip(&s.band)
                .map(|(p, b)| (p.0, b.1))
                .chain(s.points.iter().zip(&s.band).rev().map(|(p, b)| (p.0, b.0)))
                .filter(|p| p.0.is_finite() && p.1.is_finite())
                .collect();
            chart
                .draw_series(std::iter::once(Polygon::new(
                    outline,
                    color.mix(0.18).filled(),
                )))
                .map_err(plot_error)?;
        }
        let points: Vec<(f64, f64)> = s.points.iter().filter(finite).copied().collect();
        chart
            .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))
            .map_err(plot_error)?
            .label(s.name.clone())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
            });
        if points.len() <= 30 {
            chart
                .draw_series(points.iter().map(|&p| Circle::new(p, 3, color.filled())))
                .map_err(plot_error)?;
        }
    }
    if series.iter().any(|s| !s.name.is_empty()) {
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(RGBColor(200, 200, 200))
            .position(SeriesLabelPosition::LowerRight)
            .draw()
            .map_err(plot_error)?;
    }
    Ok(())
}

/// The frame of a scatter chart, with room on the right for the rightmost points' labels.
fn scatter_frame<'a, 'b, DB: DrawingBackend>(
    area: &'a DrawingArea<DB, Shift>,
    title: &'b str,
) -> ChartBuilder<'a, 'b, DB> {
    let mut builder = frame(area, title, 20);
    builder.margin_right(90);
    builder
}

/// The frame every x–y chart shares: a title of `size` points, margins, room for the axes'
/// labels.
fn frame<'a, 'b, DB: DrawingBackend>(
    area: &'a DrawingArea<DB, Shift>,
    title: &'b str,
    size: u32,
) -> ChartBuilder<'a, 'b, DB> {
    let mut builder = ChartBuilder::on(area);
    builder
        .caption(title, (super::language::font_family(), size))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(56);
    builder
}

/// A marker with its name to the upper right of it (a macro: the element's type differs
/// with the axes' coordinate type).
macro_rules! labelled_point {
    () => {
        |(i, p): (usize, &&(String, f64, f64))| {
            EmptyElement::at((p.1, p.2))
                + Circle::new((0, 0), 5, COLORS[i % COLORS.len()].filled())
                + Text::new(
                    p.0.clone(),
                    (7, -14),
                    (super::language::font_family(), 13).into_font(),
                )
        }
    };
}

fn draw_scatter<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    title: &str,
    x_label: &str,
    y_label: &str,
    points: &[(String, f64, f64)],
    log_x: bool,
) -> Result<()> {
    let placed: Vec<&(String, f64, f64)> = points
        .iter()
        .filter(|p| p.1.is_finite() && p.2.is_finite() && (!log_x || p.1 > 0.0))
        .collect();
    let (y0, y1) = span(placed.iter().map(|p| p.2));
    if log_x {
        let (lo, hi) = placed
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), p| {
                (lo.min(p.1), hi.max(p.1))
            });
        let (x0, x1) = if lo.is_finite() {
            (lo / 1.5, hi * 1.5)
        } else {
            (1.0, 10.0)
        };
        let mut chart = scatter_frame(area, title)
            .build_cartesian_2d((x0..x1).log_scale(), y0..y1)
            .map_err(plot_error)?;
        chart
            .configure_mesh()
            .x_desc(x_label)
            .y_desc(y_label)
            .x_label_formatter(&|v: &f64| format!("{v:.0}"))
            .light_line_style(RGBColor(235, 235, 235))
            .draw()
            .map_err(plot_error)?;
        chart
            .draw_series(placed.iter().enumerate().map(labelled_point!()))
            .map_err(plot_error)?;
    } else {
        let (x0, x1) = span(placed.iter().map(|p| p.1));
        let mut chart = scatter_frame(area, title)
            .build_cartesian_2d(x0..x1, y0..y1)
            .map_err(plot_error)?;
        chart
            .configure_mesh()
            .x_desc(x_label)
            .y_desc(y_label)
            .light_line_style(RGBColor(235, 235, 235))
            .draw()
            .map_err(plot_error)?;
        chart
            .draw_series(placed.iter().enumerate().map(labelled_point!()))
            .map_err(plot_error)?;
    }
    Ok(())
}

fn draw_class_points<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    title: &str,
    (x_label, y_label): (&str, &str),
    classes: &[String],
    points: &[ClassPoint],
    kinds: &[String; 3],
) -> Result<()> {
    let placed: Vec<&ClassPoint> = points
        .iter()
        .filter(|p| p.x.is_finite() && p.y.is_finite())
        .collect();
    let (x0, x1) = span(placed.iter().map(|p| p.x));
    let (y0, y1) = span(placed.iter().map(|p| p.y));
    let mut chart = frame(area, title, 18)
        .build_cartesian_2d(x0..x1, y0..y1)
        .map_err(plot_error)?;
    chart
        .configure_mesh()
        .x_desc(x_label)
        .y_desc(y_label)
        .light_line_style(RGBColor(240, 240, 240))
        .draw()
        .map_err(plot_error)?;
    let color = |class: usize| COLORS[class % COLORS.len()];
    // Training photos first, so that the test photos and mistakes are drawn over them.
    for kind in [PointKind::Train, PointKind::Test, PointKind::Mistake] {
        let of_kind = placed.iter().filter(|p| p.kind == kind);
        match kind {
            PointKind::Train => chart.draw_series(
                of_kind.map(|p| Circle::new((p.x, p.y), 2, color(p.class).mix(0.35).filled())),
            ),
            PointKind::Test => chart.draw_series(of_kind.map(|p| {
                EmptyElement::at((p.x, p.y))
                    + Circle::new((0, 0), 4, color(p.class).filled())
                    + Circle::new((0, 0), 4, WHITE.stroke_width(1))
            })),
            PointKind::Mistake => chart.draw_series(of_kind.map(|p| {
                EmptyElement::at((p.x, p.y))
                    + Circle::new((0, 0), 4, color(p.class).filled())
                    + Cross::new((0, 0), 6, BLACK.stroke_width(2))
            })),
        }
        .map_err(plot_error)?;
    }
    // The legend: one entry per class (its colour), then one per kind of point shown.
    let grey = RGBColor(120, 120, 120);
    for (class, name) in classes.iter().enumerate() {
        let c = color(class);
        legend_entry(&mut chart, name, move |(x, y)| {
            Circle::new((x + 9, y), 4, c.filled())
        })?;
    }
    let shown = |kind: PointKind| placed.iter().any(|p| p.kind == kind);
    if shown(PointKind::Train) {
        legend_entry(&mut chart, &kinds[0], move |(x, y)| {
            Circle::new((x + 9, y), 2, grey.filled())
        })?;
    }
    if shown(PointKind::Test) || shown(PointKind::Mistake) {
        legend_entry(&mut chart, &kinds[1], move |(x, y)| {
            Circle::new((x + 9, y), 4, grey.filled())
        })?;
    }
    if shown(PointKind::Mistake) {
        legend_entry(&mut chart, &kinds[2], |(x, y)| {
            Cross::new((x + 9, y), 6, BLACK.stroke_width(2))
        })?;
    }
    chart
        .configure_series_labels()
        .label_font((super::language::font_family(), 13))
        .background_style(WHITE.mix(0.85))
        .border_style(RGBColor(200, 200, 200))
        .position(SeriesLabelPosition::UpperRight)
        .draw()
        .map_err(plot_error)?;
    Ok(())
}

/// A legend entry with nothing drawn on the chart: `label` beside the element `marker` draws.
fn legend_entry<'a, DB, E>(
    chart: &mut ChartContext<
        'a,
        DB,
        Cartesian2d<plotters::coord::types::RangedCoordf64, plotters::coord::types::RangedCoordf64>,
    >,
    label: &str,
    marker: impl Fn((i32, i32)) -> E + 'a,
) -> Result<()>
where
    DB: DrawingBackend + 'a,
    E: IntoDynElement<'a, DB, (i32, i32)>,
{
    chart
        .draw_series(std::iter::empty::<Circle<(f64, f64), i32>>())
        .map_err(plot_error)?
        .label(label)
        .legend(marker);
    Ok(())
}

/// White → blue, like seaborn's "Blues".
fn blues(t: f64) -> RGBColor {
    let t = t.clamp(0.0, 1.0);
    let lerp = |a: f64, b: f64| (a + (b - a) * t) as u8;
    RGBColor(lerp(247.0, 8.0), lerp(251.0, 48.0), lerp(255.0, 107.0))
}

fn draw_heatmap<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    title: &str,
    x_label: &str,
    y_label: &str,
    columns: &[String],
    rows: &[String],
    values: &[Vec<f64>],
) -> Result<()> {
    let (nx, ny) = (columns.len() as i32, rows.len() as i32);
    let (lo, hi) = values
        .iter()
        .flatten()
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &v| {
            (a.min(v), b.max(v))
        });
    let scale = |v: f64| if hi > lo { (v - lo) / (hi - lo) } else { 0.5 };
    let mut chart = ChartBuilder::on(area)
        .caption(title, (super::language::font_family(), 20))
        .margin(12)
        .x_label_area_size(50)
        .y_label_area_size(100)
        .build_cartesian_2d(segments(nx), segments(ny))
        .map_err(plot_error)?;
    let column_name = |v: &SegmentValue<i32>| match v {
        SegmentValue::CenterOf(i) => columns.get(*i as usize).cloned().unwrap_or_default(),
        _ => String::new(),
    };
    // Row 0 at the top, as in a printed matrix.
    let row_name = |v: &SegmentValue<i32>| match v {
        SegmentValue::CenterOf(i) => rows
            .get((ny - 1 - *i) as usize)
            .cloned()
            .unwrap_or_default(),
        _ => String::new(),
    };
    chart
        .configure_mesh()
        .disable_mesh()
        .x_desc(x_label)
        .y_desc(y_label)
        .x_labels(columns.len())
        .y_labels(rows.len())
        .x_label_formatter(&column_name)
        .y_label_formatter(&row_name)
        .draw()
        .map_err(plot_error)?;
    for (r, row) in values.iter().enumerate() {
        let y = ny - 1 - r as i32;
        for (c, &v) in row.iter().enumerate() {
            let x = c as i32;
            let fill = if v.is_finite() {
                blues(scale(v))
            } else {
                RGBColor(220, 220, 220)
            };
            chart
                .draw_series(std::iter::once(Rectangle::new(
                    [
                        (SegmentValue::Exact(x), SegmentValue::Exact(y)),
                        (SegmentValue::Exact(x + 1), SegmentValue::Exact(y + 1)),
                    ],
                    fill.filled(),
                )))
                .map_err(plot_error)?;
            let ink = if scale(v) > 0.55 { WHITE } else { BLACK };
            let text = if v.is_finite() {
                format!("{v:.2}")
            } else {
                "–".into()
            };
            chart
                .draw_series(std::iter::once(Text::new(
                    text,
                    (SegmentValue::CenterOf(x), SegmentValue::CenterOf(y)),
                    (super::language::font_family(), 15)
                        .into_font()
                        .color(&ink)
                        .pos(plotters::style::text_anchor::Pos::new(
                            plotters::style::text_anchor::HPos::Center,
                            plotters::style::text_anchor::VPos::Center,
                        )),
                )))
                .map_err(plot_error)?;
        }
    }
    Ok(())
}

fn draw_bars<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    title: &str,
    value_label: &str,
    items: &[(String, f64)],
    ranges: &[(f64, f64)],
) -> Result<()> {
    let n = items.len() as i32;
    let max = items
        .iter()
        .map(|i| i.1)
        .chain(ranges.iter().map(|r| r.1))
        .filter(|v| v.is_finite())
        .fold(0.0f64, f64::max);
    let top = if max <= 1.0 { 1.0 } else { max * 1.15 };
    let mut chart = ChartBuilder::on(area)
        .caption(title, (super::language::font_family(), 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(130)
        .build_cartesian_2d(0.0..top, segments(n))
        .map_err(plot_error)?;
    let name = |v: &SegmentValue<i32>| match v {
        SegmentValue::CenterOf(i) => items
            .get((n - 1 - *i) as usize)
            .map(|i| i.0.clone())
            .unwrap_or_default(),
        _ => String::new(),
    };
    chart
        .configure_mesh()
        .disable_y_mesh()
        .x_desc(value_label)
        .y_labels(items.len())
        .y_label_formatter(&name)
        .light_line_style(RGBColor(235, 235, 235))
        .draw()
        .map_err(plot_error)?;
    for (k, (_, v)) in items.iter().enumerate() {
        let y = n - 1 - k as i32;
        let v = if v.is_finite() { *v } else { 0.0 };
        let mut bar = Rectangle::new(
            [
                (0.0, SegmentValue::Exact(y)),
                (v, SegmentValue::Exact(y + 1)),
            ],
            COLORS[0].mix(if k == 0 { 1.0 } else { 0.6 }).filled(),
        );
        bar.set_margin(6, 6, 0, 0);
        chart
            .draw_series(std::iter::once(bar))
            .map_err(plot_error)?;
        // The runs' range: a whisker through the bar's middle.
        let mut label_at = v;
        if let Some(&(lo, hi)) = ranges
            .get(k)
            .filter(|(lo, hi)| lo.is_finite() && hi.is_finite())
        {
            let whisker = PathElement::new(
                vec![
                    (lo, SegmentValue::CenterOf(y)),
                    (hi, SegmentValue::CenterOf(y)),
                ],
                BLACK.stroke_width(2),
            );
            chart
                .draw_series(std::iter::once(whisker))
                .map_err(plot_error)?;
            label_at = hi;
        }
        chart
            .draw_series(std::iter::once(Text::new(
                format!(" {v:.3}"),
                (label_at, SegmentValue::CenterOf(y)),
                (super::language::font_family(), 14)
                    .into_font()
                    .color(&BLACK)
                    .pos(plotters::style::text_anchor::Pos::new(
                        plotters::style::text_anchor::HPos::Left,
                        plotters::style::text_anchor::VPos::Center,
                    )),
            )))
            .map_err(plot_error)?;
    }
    Ok(())
}
