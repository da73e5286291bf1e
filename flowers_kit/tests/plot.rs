//! Every figure kind renders to a valid PNG or SVG of the expected size.

mod support;

use flowers_kit::data::{Augment, Dataset, Example};
use flowers_kit::plot::{self, Chart, Gallery, Picture, Series};
use flowers_kit::train::{History, Metrics, Prediction};
use flowers_kit::Error;

fn decode_png(bytes: &[u8]) -> image::RgbImage {
    image::load_from_memory_with_format(bytes, image::ImageFormat::Png)
        .expect("a valid PNG")
        .to_rgb8()
}

/// The SVG's declared size, and that it is a whole document.
fn svg_size(svg: &str) -> (u32, u32) {
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    let attr = |name: &str| -> u32 {
        let start = svg.find(&format!("{name}=\"")).unwrap() + name.len() + 2;
        svg[start..].split('"').next().unwrap().parse().unwrap()
    };
    (attr("width"), attr("height"))
}

fn history() -> History {
    History {
        step: vec![0, 10, 20],
        train_loss: vec![1.6, 0.9, 0.5],
        train_accuracy: vec![0.2, 0.6, 0.9],
        test_loss: vec![1.7, 1.0, 0.7],
        test_accuracy: vec![0.2, 0.55, 0.8],
        ..Default::default()
    }
}

fn metrics() -> Metrics {
    let classes: Vec<String> = ["daisy", "roses", "tulips"].map(String::from).to_vec();
    let photos = support::golden().join("images");
    let paths = vec![
        photos.join("00_daisy.jpg"),
        photos.join("03_roses.jpg"),
        photos.join("06_tulips.jpg"),
    ];
    let probabilities = vec![0.7, 0.2, 0.1, 0.6, 0.3, 0.1, 0.1, 0.2, 0.7];
    Metrics::from_probabilities(&classes, &[0, 1, 2], &probabilities, &paths).unwrap()
}

fn check_chart(chart: &Chart, dir: &std::path::Path, name: &str) {
    let (w, h) = chart.size();
    assert_eq!(svg_size(&chart.svg().unwrap()), (w, h), "{name}");
    let png = decode_png(&chart.png().unwrap());
    assert_eq!(png.dimensions(), (w, h), "{name}");
    // Something was drawn: not a blank canvas.
    assert!(png.pixels().filter(|p| p.0 != [255, 255, 255]).count() > (w * h / 100) as usize);
    chart.save(dir.join(format!("{name}.svg"))).unwrap();
    chart.save(dir.join(format!("{name}.png"))).unwrap();
    assert_eq!(
        decode_png(&std::fs::read(dir.join(format!("{name}.png"))).unwrap()).dimensions(),
        (w, h)
    );
    assert!(std::fs::read_to_string(dir.join(format!("{name}.svg")))
        .unwrap()
        .contains("<text"));
}

#[test]
fn every_chart_kind_renders_as_svg_and_png() {
    let dir = tempfile::tempdir().unwrap();
    check_chart(&plot::curves(&history()), dir.path(), "curves");
    let confusion = plot::confusion(&metrics()).unwrap();
    assert!(confusion.svg().unwrap().contains("tulips"));
    check_chart(&confusion, dir.path(), "confusion");
    let predictions = vec![
        Prediction {
            class: "roses".into(),
            label: 1,
            probability: 0.8,
        },
        Prediction {
            class: "tulips".into(),
            label: 2,
            probability: 0.15,
        },
    ];
    check_chart(&plot::top_k(&predictions), dir.path(), "top_k");
    let sweep = Chart::lines(
        "Optimizers",
        "step",
        "test accuracy",
        vec![
            Series::new("sgd", vec![(0.0, 0.2), (10.0, 0.5)]),
            Series::new("adam", vec![(0.0, 0.2), (10.0, 0.8)]),
        ],
    );
    assert!(sweep.svg().unwrap().contains("adam"));
    // A training run's curves, borrowed by the chart: the caller keeps them.
    let history = history();
    let curves = vec![
        Series::test_accuracy("accuracy", &history),
        Series::test_loss("loss", &history),
    ];
    let borrowed = Chart::lines("Run", "step", "value", &curves);
    assert!(borrowed.svg().unwrap().contains("loss"));
    assert_eq!(curves[0].points.len(), history.step.len());
    assert_eq!(curves[1].points[1].0, history.step[1] as f64);
    assert_eq!(
        history.final_test_accuracy(),
        *history.test_accuracy.last().unwrap()
    );
    check_chart(&sweep, dir.path(), "sweep");
    let heatmap = Chart::heatmap(
        "lr × batch",
        "batch size",
        "learning rate",
        [10, 100],
        ["0.01", "0.1", "1"],
        [[0.7, 0.8], [0.75, 0.85], [0.5, f64::NAN]],
    )
    .unwrap();
    check_chart(&heatmap, dir.path(), "heatmap");
    check_chart(
        &Chart::bars("Results", "accuracy", [("linear".to_string(), 0.8)]),
        dir.path(),
        "bars",
    );
}

#[test]
fn photo_figures_are_pngs_with_the_photos_in_them() {
    let dir = tempfile::tempdir().unwrap();
    let split = Dataset::open(support::sample_dir())
        .unwrap()
        .split(0.8, 2018)
        .unwrap();
    let grid = Picture::labelled(&split.train[..7], split.classes(), 4).unwrap();
    let (w, h) = grid.size();
    let png = decode_png(&grid.png().unwrap());
    assert_eq!(png.dimensions(), (w, h));
    assert_eq!(w, 4 * 190 + 10);
    // Colourful photo pixels, not only white and black text.
    let colourful = png.pixels().filter(|p| {
        let [r, g, b] = p.0;
        r.max(g).max(b) - r.min(g).min(b) > 40
    });
    assert!(colourful.count() > (w * h / 10) as usize);
    grid.save(dir.path().join("grid.png")).unwrap();
    assert!(dir.path().join("grid.png").is_file());

    let gallery = Picture::mistakes(&metrics(), Gallery::default()).unwrap();
    let png = decode_png(&gallery.png().unwrap());
    assert_eq!(png.dimensions(), gallery.size());
    // One mistake (roses predicted as daisy): one cell wide.
    assert_eq!(gallery.size().0, 190 + 10);

    // Augmented views: four per row, each different, none of them blank.
    let photo = &split.train[0].path;
    let views = Picture::views(photo, &Augment::default(), 6, 224).unwrap();
    assert_eq!(views.size().0, 4 * 190 + 10);
    let png = decode_png(&views.png().unwrap());
    let tile = |i: u32| {
        let (x, y) = (10 + (i % 4) * 190 + 20, 10 + (i / 4) * (150 + 18 + 10));
        image::imageops::crop_imm(&png, x, y, 150, 150).to_image()
    };
    for i in 1..6 {
        assert_ne!(tile(i), tile(0), "view {i} looks like view 0");
    }
    assert!(Picture::views(photo, &Augment::default(), 0, 224).is_err());
    assert!(Picture::views(photo, &Augment::default(), 4, 0).is_err());
    assert!(Picture::views("/no/such.jpg", &Augment::default(), 4, 224).is_err());
}

#[test]
fn bad_figure_requests_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let err = plot::curves(&history())
        .save(dir.path().join("c.jpg"))
        .unwrap_err();
    assert!(err.to_string().contains("c.jpg"), "{err}");
    let err = Chart::heatmap("x", "a", "b", ["1"], ["1"], [[1.0, 2.0]]).unwrap_err();
    assert!(matches!(err, Error::InvalidArgument(_)));
    assert!(Picture::labelled(&[], &[], 3).is_err());
    let all_right =
        Metrics::from_probabilities(&["a".into(), "b".into()], &[0], &[0.9, 0.1], &[]).unwrap();
    assert!(Picture::mistakes(
        &all_right,
        Gallery {
            photos: 5,
            columns: 5
        }
    )
    .unwrap_err()
    .to_string()
    .contains("every prediction was right"));
    // An unreadable photo becomes a grey tile rather than failing the whole grid.
    let bad = dir.path().join("bad.jpg");
    std::fs::write(&bad, "nope").unwrap();
    let grid = Picture::labelled(
        &[Example {
            path: bad,
            label: 0,
        }],
        &["a".into()],
        1,
    )
    .unwrap();
    assert_eq!(decode_png(&grid.png().unwrap()).dimensions(), grid.size());
}

#[test]
fn several_seeds_show_as_a_band_and_as_whiskers() {
    use flowers_kit::train::{SeedRuns, Spread};
    let run = |offset: f32| History {
        step: vec![0, 10, 20],
        test_accuracy: vec![0.2 + offset, 0.6 + offset, 0.8 + offset],
        validation_accuracy: vec![0.3 + offset, 0.5 + offset, 0.7 + offset],
        ..Default::default()
    };
    let runs = SeedRuns {
        seeds: vec![0, 1, 2],
        histories: vec![run(0.0), run(0.05), run(0.1)],
        classifiers: Vec::new(),
    };
    let series = Series::validation_accuracy_of("adam", &runs);
    assert_eq!(series.points.len(), 3);
    let (lo, hi) = series.band[2];
    assert!(
        (lo - 0.7).abs() < 1e-6 && (hi - 0.8).abs() < 1e-6,
        "{lo} {hi}"
    );
    assert!((series.points[2].1 - 0.75).abs() < 1e-6);
    let plain = Chart::lines(
        "t",
        "step",
        "accuracy",
        [Series::test_accuracy("one", &runs.histories[0])],
    )
    .svg()
    .unwrap();
    let banded = Chart::lines("t", "step", "accuracy", [series])
        .svg()
        .unwrap();
    assert!(banded.matches("<polygon").count() > plain.matches("<polygon").count());
    let spread = runs.final_test_accuracy();
    assert_eq!(
        (spread.min, spread.max),
        (0.800000011920929, 0.9000000357627869)
    );
    let bars = Chart::bars_with_range("t", "accuracy", [("adam".to_string(), spread)]);
    let svg = bars.svg().unwrap();
    assert!(svg.contains("0.850"), "the mean is the bar's label");
    assert_eq!(Spread::of(&[0.5]).percent(), "50.0 % (50.0–50.0)");
}

/// The x positions of the SVG's circles of radius `r`.
fn circle_xs(svg: &str, r: u32) -> Vec<f64> {
    svg.split("<circle")
        .skip(1)
        .filter(|c| c.contains(&format!("r=\"{r}\"")))
        .map(|c| {
            let start = c.find("cx=\"").unwrap() + 4;
            c[start..].split('"').next().unwrap().parse().unwrap()
        })
        .collect()
}

#[test]
fn a_scatter_names_every_point_and_spaces_a_log_axis_by_ratio() {
    let points = [
        ("small".to_string(), 10.0, 0.7),
        ("medium".to_string(), 100.0, 0.8),
        ("large".to_string(), 1000.0, 0.9),
    ];
    let log = Chart::scatter("Speed and accuracy", "photos/s", "accuracy", &points, true);
    let svg = log.svg().unwrap();
    assert_eq!(svg_size(&svg), log.size());
    for name in ["small", "medium", "large", "Speed and accuracy"] {
        assert!(svg.contains(name), "{name} is not drawn");
    }
    let xs = circle_xs(&svg, 5);
    assert_eq!(xs.len(), 3, "{svg}");
    // Each step is ×10, so the points are evenly spaced on a log axis...
    assert!(((xs[1] - xs[0]) - (xs[2] - xs[1])).abs() <= 1.0, "{xs:?}");
    // ...and not on a linear one.
    let linear = Chart::scatter("t", "x", "y", &points, false).svg().unwrap();
    let xs = circle_xs(&linear, 5);
    assert!((xs[2] - xs[1]) > 5.0 * (xs[1] - xs[0]), "{xs:?}");
    // A point a log axis cannot place is left out, not drawn at the edge or an error.
    let with_zero = [("zero".to_string(), 0.0, 0.5), points[0].clone()];
    let svg = Chart::scatter("t", "x", "y", &with_zero, true)
        .svg()
        .unwrap();
    assert_eq!(circle_xs(&svg, 5).len(), 1);
    assert!(!svg.contains(">zero<"));
    assert_eq!(decode_png(&log.png().unwrap()).dimensions(), log.size());
}
