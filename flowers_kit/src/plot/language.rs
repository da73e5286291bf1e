//! The language of the figures' own words (titles, axes, legends, captions), and the font
//! they are drawn with.
//!
//! English text is drawn with the embedded DejaVu Sans. [`Language::ZhCn`] — the tutorial's
//! original language, which the zh-CN notebooks set — draws every figure with an embedded
//! subset of Noto Sans CJK SC (SIL Open Font License): the characters of these texts, the
//! 3,500 characters of level 1 of the Table of General Standard Chinese Characters, CJK
//! punctuation and ASCII, so that a learner's own titles and class names render too
//! (`fonts/README.md` says how it was cut).

/// The language of the figures' own texts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Language {
    /// English (the default).
    #[default]
    English,
    /// Simplified Chinese, as the tutorial's original.
    ZhCn,
}

impl Language {
    /// The language's tag, as [`LANGUAGE_VARIABLE`] holds it: `en` or `zh-CN`.
    pub fn tag(&self) -> &'static str {
        match self {
            Language::English => "en",
            Language::ZhCn => "zh-CN",
        }
    }
}

/// The environment variable that holds the figures' language (`en` or `zh-CN`).
///
/// The setting lives in the process environment, not in a static, because evcxr compiles
/// each notebook cell into a library of its own that carries its own copy of the kit's
/// statics: a static set in one cell would be unset in the next. The environment is the
/// kernel process's, shared by every cell. A class server can also set it for every
/// learner's kernel.
pub const LANGUAGE_VARIABLE: &str = "FLOWERS_KIT_LANGUAGE";

/// Draws every figure made from now on in `language`, in every later cell of a notebook
/// (it sets [`LANGUAGE_VARIABLE`] for the process).
///
/// Call it at the start, before other threads run, as a notebook's first cells do: changing
/// the environment while C code in another thread reads it is not thread-safe.
///
/// ```
/// use flowers_kit::plot::{self, Language};
/// plot::set_language(Language::ZhCn);
/// assert_eq!(plot::language(), Language::ZhCn);
/// plot::set_language(Language::English);
/// ```
pub fn set_language(language: Language) {
    std::env::set_var(LANGUAGE_VARIABLE, language.tag());
}

/// The language figures are drawn in: `zh-CN` (or `zh`, `zh_CN`, any case) in
/// [`LANGUAGE_VARIABLE`] means Chinese; anything else, or nothing, English.
pub fn language() -> Language {
    match std::env::var(LANGUAGE_VARIABLE) {
        Ok(tag) if matches!(tag.to_ascii_lowercase().as_str(), "zh-cn" | "zh_cn" | "zh") => {
            Language::ZhCn
        }
        _ => Language::English,
    }
}

/// The font family figures use in the current language.
pub(crate) fn font_family() -> &'static str {
    match language() {
        Language::English => "sans-serif",
        Language::ZhCn => CJK_FAMILY,
    }
}

/// The name the embedded CJK subset is registered under.
pub(crate) const CJK_FAMILY: &str = "flowers-cjk";

/// The embedded CJK subset (see the module's documentation).
pub(crate) const CJK_FONT: &[u8] = include_bytes!("../../fonts/NotoSansSC-flowers.otf");

/// The figures' own words in one language.
pub(crate) struct Texts {
    pub loss: &'static str,
    pub accuracy_title: &'static str,
    pub step: &'static str,
    pub cross_entropy: &'static str,
    pub accuracy: &'static str,
    pub train_batch: &'static str,
    pub test: &'static str,
    pub predicted_label: &'static str,
    pub true_label: &'static str,
    pub prediction: &'static str,
    pub probability: &'static str,
}

const ENGLISH: Texts = Texts {
    loss: "Loss",
    accuracy_title: "Accuracy",
    step: "step",
    cross_entropy: "cross-entropy",
    accuracy: "accuracy",
    train_batch: "train (batch)",
    test: "test",
    predicted_label: "predicted label",
    true_label: "true label",
    prediction: "Prediction",
    probability: "probability",
};

const CHINESE: Texts = Texts {
    loss: "损失",
    accuracy_title: "准确率",
    step: "训练步数",
    cross_entropy: "交叉熵",
    accuracy: "准确率",
    train_batch: "训练（批次）",
    test: "测试",
    predicted_label: "预测标签",
    true_label: "真实标签",
    prediction: "预测",
    probability: "概率",
};

/// The texts of the current language.
pub(crate) fn texts() -> &'static Texts {
    match language() {
        Language::English => &ENGLISH,
        Language::ZhCn => &CHINESE,
    }
}

/// "Confusion matrix (test accuracy 84.0%)".
pub(crate) fn confusion_title(accuracy: f32) -> String {
    match language() {
        Language::English => format!("Confusion matrix (test accuracy {:.1}%)", accuracy * 100.0),
        Language::ZhCn => format!("混淆矩阵（测试准确率 {:.1}%）", accuracy * 100.0),
    }
}

/// A misclassified photo's captions: what was predicted, with what probability, and the
/// label.
pub(crate) fn mistake_captions(prediction: &str, probability: f32, label: &str) -> [String; 2] {
    let percent = probability * 100.0;
    match language() {
        Language::English => [
            format!("prediction: {prediction} ({percent:.0}%)"),
            format!("label: {label}"),
        ],
        Language::ZhCn => [
            format!("预测：{prediction}（{percent:.0}%）"),
            format!("标签：{label}"),
        ],
    }
}

/// A feature-space map's title, its axes' labels, and the legend entries of its training
/// photos, test photos and test mistakes.
pub(crate) type MapTexts = (String, (String, String), [String; 3]);

/// The feature-space map's title, axes and legend entries for its kinds of point: `model`
/// and the share of the variance its two axes show.
pub(crate) fn feature_space_texts(model: &str, explained: [f64; 2]) -> MapTexts {
    let [a, b] = explained.map(|e| e * 100.0);
    match language() {
        Language::English => (
            format!(
                "{model}: the feature space in 2-D (PCA: these two axes hold {:.0}% of the variance)",
                a + b
            ),
            (
                format!("first principal component ({a:.0}%)"),
                format!("second principal component ({b:.0}%)"),
            ),
            point_kinds(),
        ),
        Language::ZhCn => (
            format!(
                "{model}：特征空间的 PCA 二维投影（两轴共解释了 {:.0}% 的方差）",
                a + b
            ),
            (
                format!("第一主成分（{a:.0}%）"),
                format!("第二主成分（{b:.0}%）"),
            ),
            point_kinds(),
        ),
    }
}

/// The legend entries of a feature-space map's training photos, test photos and test
/// mistakes.
fn point_kinds() -> [String; 3] {
    match language() {
        Language::English => ["training photo", "test photo", "test photo, wrong"],
        Language::ZhCn => ["训练照片", "测试照片", "测试照片（判错）"],
    }
    .map(String::from)
}

/// The t-SNE map's title, axes and legend entries: `model` and the number of test photos.
pub(crate) fn tsne_texts(model: &str, photos: usize) -> MapTexts {
    match language() {
        Language::English => (
            format!("{model}: t-SNE of the {photos} test photos (neighbours stay neighbours)"),
            ("t-SNE 1".into(), "t-SNE 2".into()),
            point_kinds(),
        ),
        Language::ZhCn => (
            format!("{model}：{photos} 张测试照片的 t-SNE 图（特征空间中的近邻在图上仍是近邻）"),
            ("t-SNE 1".into(), "t-SNE 2".into()),
            point_kinds(),
        ),
    }
}

/// The caption of one photo's class-activation map: the class it is for, with its
/// probability.
pub(crate) fn class_map_caption(class: &str, probability: f32) -> String {
    let percent = probability * 100.0;
    match language() {
        Language::English => format!("Grad-CAM: {class} ({percent:.0}%)"),
        Language::ZhCn => format!("类激活图：{class}（概率 {percent:.0}%）"),
    }
}

/// "view 3": the caption of an augmented view.
pub(crate) fn view_caption(index: usize) -> String {
    match language() {
        Language::English => format!("view {index}"),
        Language::ZhCn => format!("视图 {index}"),
    }
}
