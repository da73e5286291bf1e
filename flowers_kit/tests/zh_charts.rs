//! The zh-CN edition's figures are in Chinese, drawn with the embedded CJK font: their texts
//! are Chinese, the font has a glyph for every character the kit draws and for the 3,500 of
//! level 1 of the Table of General Standard Chinese Characters, and a rendered title is the
//! font's glyphs, not missing-glyph boxes. (A binary of its own: the language is a
//! process-wide setting.)

mod support;

use std::path::Path;

use ab_glyph::{Font, FontRef};
use flowers_kit::plot::{self, Chart, Language};
use flowers_kit::train::{History, Metrics};

fn font_bytes() -> Vec<u8> {
    std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("fonts/NotoSansSC-flowers.otf"))
        .unwrap()
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

/// The PNG's pixels, decoded.
fn pixels(png: &[u8]) -> image::RgbImage {
    image::load_from_memory(png).unwrap().to_rgb8()
}

/// How many pixels of the top `rows` rows (the title) differ between two renders.
fn title_difference(a: &image::RgbImage, b: &image::RgbImage, rows: u32) -> usize {
    (0..rows)
        .flat_map(|y| (0..a.width()).map(move |x| (x, y)))
        .filter(|&(x, y)| a.get_pixel(x, y) != b.get_pixel(x, y))
        .count()
}

#[test]
fn the_zh_cn_figures_speak_chinese_with_glyphs_for_every_character() {
    plot::set_language(Language::ZhCn);
    // The setting is the process environment's, which every evcxr cell shares (each cell
    // has its own copy of the kit's statics), and which a class server can set too.
    assert_eq!(std::env::var(plot::LANGUAGE_VARIABLE).unwrap(), "zh-CN");
    for (tag, language) in [
        ("fr", Language::English),
        ("ZH_cn", Language::ZhCn),
        ("zh-CN", Language::ZhCn),
    ] {
        std::env::set_var(plot::LANGUAGE_VARIABLE, tag);
        assert_eq!(plot::language(), language, "{tag}");
    }
    let svg = plot::curves(&history()).svg().unwrap();
    for text in [
        "损失",
        "准确率",
        "训练步数",
        "交叉熵",
        "训练（批次）",
        "测试",
    ] {
        assert!(svg.contains(text), "{text} is missing from the SVG");
    }
    assert!(!svg.contains("Accuracy"));
    let classes: Vec<String> = ["daisy", "roses"].map(String::from).to_vec();
    let metrics =
        Metrics::from_probabilities(&classes, &[0, 1], &[0.9, 0.1, 0.4, 0.6], &[]).unwrap();
    let confusion = plot::confusion(&metrics).unwrap().svg().unwrap();
    assert!(confusion.contains("混淆矩阵") && confusion.contains("预测标签"));
    // The feature-space map: title, axes and legend in Chinese.
    let features = two_class_features();
    let wrong = Metrics::from_probabilities(
        &classes,
        features.test.labels(),
        &[0.1, 0.9, 0.9, 0.1],
        features.test.paths(),
    )
    .unwrap();
    let map = plot::feature_space(&features, Some(&wrong))
        .unwrap()
        .svg()
        .unwrap();
    for text in ["特征空间", "主成分", "训练照片", "测试照片（判错）"] {
        assert!(map.contains(text), "{text} is missing from the feature map");
    }

    // Every character the kit draws, and level 1 of the standard table, has a glyph.
    let bytes = font_bytes();
    let font = FontRef::try_from_slice(&bytes).unwrap();
    let tsne = plot::feature_space_tsne(&two_class_features_for_tsne(), None)
        .unwrap()
        .svg()
        .unwrap();
    assert!(tsne.contains("张测试照片的 t-SNE 图"), "t-SNE title");
    let drawn: String = [
        svg.as_str(),
        confusion.as_str(),
        map.as_str(),
        tsne.as_str(),
    ]
    .concat();
    let level1 = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("fonts/tgscc-level1.txt"),
    )
    .unwrap();
    let level1: String = level1.lines().filter(|l| !l.starts_with('#')).collect();
    assert_eq!(level1.chars().count(), 3500);
    let missing: Vec<char> = drawn
        .chars()
        .filter(|c| (*c as u32) >= 0x3000)
        .chain(level1.chars())
        .filter(|&c| font.glyph_id(c).0 == 0)
        .collect();
    assert!(missing.is_empty(), "no glyph for {missing:?}");

    // Rendered, a Chinese title is ink of the font's glyphs, not missing-glyph boxes: the
    // same title of characters outside the font (drawn as boxes) looks different, while
    // the title rendered twice is pixel-identical.
    let chart = |title: &str| {
        pixels(
            &Chart::bars(title, "概率", [("daisy".to_string(), 0.7)])
                .png()
                .unwrap(),
        )
    };
    let chinese = chart("准确率与混淆矩阵");
    let boxes = chart("\u{20000}\u{20001}\u{20002}\u{20003}\u{20004}\u{20005}\u{20006}\u{20007}");
    assert_eq!(
        title_difference(&chinese, &chart("准确率与混淆矩阵"), 40),
        0
    );
    assert!(
        title_difference(&chinese, &boxes, 40) > 200,
        "the Chinese title rendered like missing-glyph boxes"
    );
    // And the glyphs are the font's: one character rendered alone covers about the area
    // the font's own outline does.
    let glyph = font.glyph_id('准').with_scale(20.0);
    let outline = font.outline_glyph(glyph).unwrap();
    let mut covered = 0usize;
    outline.draw(|_, _, c| {
        if c > 0.5 {
            covered += 1;
        }
    });
    let alone = chart("准");
    let blank = chart(" ");
    let inked = title_difference(&alone, &blank, 40);
    assert!(
        inked as f64 > covered as f64 * 0.5 && (inked as f64) < covered as f64 * 3.0,
        "rendered {inked} pixels where the font's glyph covers {covered}"
    );
    plot::set_language(Language::English);
    assert!(plot::curves(&history()).svg().unwrap().contains("Accuracy"));
}

/// Features of 6 training and 2 test photos of two classes, in 3 dimensions.
fn two_class_features() -> flowers_kit::features::Features {
    use flowers_kit::features::{FeatureExtractor, FeatureSet, Features};
    use flowers_kit::models::Model;
    let set = |values: Vec<f32>, labels: Vec<usize>| {
        let paths = (0..labels.len())
            .map(|i| std::path::PathBuf::from(format!("{i}.jpg")))
            .collect();
        FeatureSet::new(values, 3, labels, paths).unwrap()
    };
    let extractor =
        FeatureExtractor::with_random_weights(Model::parse("mobilenet_v2_0.35_96").unwrap(), 0)
            .unwrap();
    Features {
        classes: vec!["daisy".into(), "roses".into()],
        source: extractor.source(),
        dim: 3,
        train: set(
            vec![
                0., 0., 1., 1., 0., 0., 0., 1., 0., 5., 5., 1., 6., 5., 0., 5., 6., 0.,
            ],
            vec![0, 0, 0, 1, 1, 1],
        ),
        validation: FeatureSet::new(vec![], 3, vec![], vec![]).unwrap(),
        test: set(vec![0., 0., 0., 5., 5., 5.], vec![0, 1]),
        train_views: vec![],
        augment: None,
        cut: None,
    }
}

/// [`two_class_features`] with enough test photos for t-SNE (4 or more).
fn two_class_features_for_tsne() -> flowers_kit::features::Features {
    let mut features = two_class_features();
    features.test = features.train.clone();
    features
}
