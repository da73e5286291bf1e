// Copyright 2020 The Evcxr Authors.
//
// Licensed under the Apache License, Version 2.0 <LICENSE or
// https://www.apache.org/licenses/LICENSE-2.0> or the MIT license <LICENSE
// or https://opensource.org/licenses/MIT>, at your option. This file may not be
// copied, modified, or distributed except according to those terms.

use anyhow::Context;
use anyhow::Result;
use anyhow::anyhow;
use anyhow::bail;
use once_cell::sync::Lazy;
use ra_ap_base_db::CrateGraphBuilder;
use ra_ap_base_db::ProcMacroPaths;
use ra_ap_base_db::SourceRoot;
use ra_ap_hir as ra_hir;
use ra_ap_ide as ra_ide;
use ra_ap_ide::CompletionFieldsToResolve;
use ra_ap_ide::FileRange;
use ra_ap_ide::RaFixtureConfig;
use ra_ap_ide::SubstTyLen;
use ra_ap_ide_db::FxHashMap;
use ra_ap_ide_db::SnippetCap;
use ra_ap_ide_db::imports::insert_use::ImportGranularity;
use ra_ap_ide_db::imports::insert_use::InsertUseConfig;
use ra_ap_paths::AbsPathBuf;
use ra_ap_project_model::CargoConfig;
use ra_ap_project_model::ProjectManifest;
use ra_ap_project_model::ProjectWorkspace;
use ra_ap_project_model::RustLibSource;
use ra_ap_syntax::TextRange;
use ra_ap_syntax::ast::AstNode;
use ra_ap_syntax::ast::{self};
use ra_ap_vfs as ra_vfs;
use ra_ap_vfs::FileId;
use ra_ap_vfs::loader::LoadingProgress;
use ra_ap_vfs_notify as vfs_notify;
use ra_ide::CallableSnippets;
use ra_ide::Edition;
use ra_ide::HoverConfig;
use ra_ide::HoverResult;
use ra_ide::RangeInfo;
use std::collections::HashMap;
use std::convert::TryFrom;
use std::path::Path;

pub(crate) const EDITION: Edition = Edition::Edition2024;

/// What evcxr asks of rust-analyzer, answered either by an analysis of its own (`Local`, as
/// upstream evcxr does) or by a rust-analyzer shared by every kernel of this user on the machine
/// (`Shared`, when `EVCXR_SHARED_ANALYZER` names its socket; see `shared_analyzer.rs`). Each
/// kernel's analysis holds the module trees of its whole dependency tree: ~0.5-1.3 GB. Kernels
/// with the same dependencies (a class running one notebook) share that in one process.
pub(crate) struct RustAnalyzer {
    backend: Backend,
    root_directory: std::path::PathBuf,
    last_source: Option<String>,
    reconnects: u32,
}

enum Backend {
    Local {
        engine: Box<Engine>,
        session: SessionId,
    },
    Shared(crate::shared_analyzer::Client),
}

impl RustAnalyzer {
    pub(crate) fn new(root_directory: &Path) -> Result<RustAnalyzer> {
        let backend = match Self::connect_shared(root_directory) {
            Some(Ok(client)) => Backend::Shared(client),
            Some(Err(error)) => {
                log(&format!(
                    "evcxr: shared rust-analyzer unavailable ({error:#}); using one of this kernel's own"
                ));
                Self::local_backend(root_directory, true)?
            }
            None => Self::local_backend(root_directory, true)?,
        };
        Ok(Self::with_backend(root_directory, backend))
    }

    fn with_backend(root_directory: &Path, backend: Backend) -> RustAnalyzer {
        RustAnalyzer {
            backend,
            root_directory: root_directory.to_owned(),
            last_source: None,
            reconnects: 0,
        }
    }

    /// A session at the shared analyzer `EVCXR_SHARED_ANALYZER` names, if it names one.
    fn connect_shared(root_directory: &Path) -> Option<Result<crate::shared_analyzer::Client>> {
        use crate::shared_analyzer::{Client, SOCKET_VARIABLE};
        let base = std::env::var_os(SOCKET_VARIABLE).filter(|base| !base.is_empty())?;
        Some(Client::connect(Path::new(&base), root_directory))
    }

    fn local_backend(root_directory: &Path, with_sysroot: bool) -> Result<Backend> {
        let mut engine = Box::new(Engine::new(with_sysroot));
        let session = engine.open(root_directory)?;
        Ok(Backend::Local { engine, session })
    }

    /// What to do when the shared analyzer fails a request. A server that went away (killed,
    /// crashed) is started again, up to three times in a kernel's life: a class whose kernels
    /// all fell back to their own would each load the whole analysis again. A server that is
    /// stuck (no answer in time), that failed the request itself, or that keeps dying is left
    /// for an analysis of this kernel's own. Either way the new backend is brought to the same
    /// source, so that the learner's variables and their types live on.
    fn fall_back(&mut self, error: &anyhow::Error) -> Result<()> {
        self.reconnects += 1;
        let reconnected =
            if crate::shared_analyzer::is_connection_error(error) && self.reconnects <= 3 {
                Self::connect_shared(&self.root_directory).and_then(Result::ok)
            } else {
                None
            };
        self.backend = match reconnected {
            Some(client) => {
                log(&format!(
                    "evcxr: shared rust-analyzer failed ({error:#}); started it again"
                ));
                Backend::Shared(client)
            }
            None => {
                log(&format!(
                    "evcxr: shared rust-analyzer failed ({error:#}); using one of this kernel's own"
                ));
                Self::local_backend(&self.root_directory, true)?
            }
        };
        if let Some(source) = self.last_source.clone() {
            let replayed = self.backend.set_source(source);
            // (A shared one that fails this too fails the request that follows, which falls
            // back again.)
            if matches!(self.backend, Backend::Local { .. }) {
                replayed?;
            }
        }
        Ok(())
    }

    /// Runs `request` on the backend; a shared analyzer's failure falls back (`fall_back`) and
    /// the request runs again there. Ends: a kernel reconnects at most three times, and its own
    /// analysis never falls back.
    fn request<T>(&mut self, mut request: impl FnMut(&mut Backend) -> Result<T>) -> Result<T> {
        loop {
            let shared = matches!(self.backend, Backend::Shared(_));
            match request(&mut self.backend) {
                Err(error) if shared => self.fall_back(&error)?,
                result => return result,
            }
        }
    }

    pub(crate) fn set_source(&mut self, source: String) -> Result<()> {
        self.last_source = Some(source.clone());
        self.request(|backend| backend.set_source(source.clone()))
    }

    /// Returns top-level variable names and their types in the specified function.
    pub(crate) fn top_level_variables(
        &mut self,
        function_name: &str,
    ) -> HashMap<String, VariableInfo> {
        self.request(|backend| backend.top_level_variables(function_name))
            .unwrap_or_else(|error| {
                // Only when falling back failed: a kernel's own analysis cannot fail this way.
                log(&format!("evcxr: rust-analyzer: {error:#}"));
                HashMap::new()
            })
    }

    pub(crate) fn completions(&mut self, position: usize) -> Result<Completions> {
        self.request(|backend| backend.completions(position))
    }

    /// The hover text (markdown or plain) at `text_range`, if any.
    pub(crate) fn hover(
        &mut self,
        text_range: TextRange,
        is_mark_down: bool,
    ) -> Result<Option<String>> {
        self.request(|backend| backend.hover(text_range, is_mark_down))
    }
}

impl Backend {
    fn set_source(&mut self, source: String) -> Result<()> {
        match self {
            Backend::Local { engine, session } => engine.set_source(*session, source),
            Backend::Shared(client) => client.set_source(source),
        }
    }

    fn top_level_variables(
        &mut self,
        function_name: &str,
    ) -> Result<HashMap<String, VariableInfo>> {
        match self {
            Backend::Local { engine, session } => {
                Ok(engine.top_level_variables(*session, function_name))
            }
            Backend::Shared(client) => client.top_level_variables(function_name),
        }
    }

    fn completions(&mut self, position: usize) -> Result<Completions> {
        match self {
            Backend::Local { engine, session } => engine.completions(*session, position),
            Backend::Shared(client) => client.completions(position),
        }
    }

    fn hover(&mut self, text_range: TextRange, is_mark_down: bool) -> Result<Option<String>> {
        match self {
            Backend::Local { engine, session } => engine.hover(*session, text_range, is_mark_down),
            Backend::Shared(client) => client.hover(text_range, is_mark_down),
        }
    }
}

/// A line on the kernel's (or the server's) standard error, which may be a full disk or a
/// closed pipe: a message that cannot be written is dropped, never a panic.
pub(crate) fn log(message: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{message}");
}

#[derive(Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum TypeName {
    Named(String),
    Closure,
    Unknown,
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub(crate) struct VariableInfo {
    /// The variable's type as Rust code, or None if we couldn't determine it.
    pub(crate) type_name: TypeName,
    /// Whether the variable is declared as mutable.
    pub(crate) is_mutable: bool,
}

pub(crate) type SessionId = u64;

fn no_session(id: SessionId) -> anyhow::Error {
    anyhow!("no analysis session {id}")
}

/// One rust-analyzer database with the crates of one or more sessions (evcxr kernels), each a
/// crate of its own (`<root>/src/lib.rs`, `<root>/Cargo.toml`). Their crate graphs are merged,
/// so the crates they have in common (the sysroot, a class's dependencies) are analysed once.
pub(crate) struct Engine {
    with_sysroot: bool,
    analysis_host: ra_ide::AnalysisHost,
    vfs: ra_vfs::Vfs,
    loader: vfs_notify::NotifyHandle,
    message_receiver: crossbeam_channel::Receiver<ra_vfs::loader::Message>,
    loader_version: u32,
    sessions: HashMap<SessionId, Session>,
    next_session: SessionId,
}

struct Session {
    root_directory: AbsPathBuf,
    source_file: AbsPathBuf,
    source_file_id: FileId,
    last_cargo_toml: Option<Vec<u8>>,
    current_source: String,
    /// Its crate graph, once its Cargo.toml is loaded.
    crate_graph: Option<CrateGraphBuilder>,
}

impl Engine {
    pub(crate) fn new(with_sysroot: bool) -> Engine {
        let (message_sender, message_receiver) = crossbeam_channel::unbounded();
        use ra_vfs::loader::Handle;
        Engine {
            with_sysroot,
            analysis_host: Default::default(),
            vfs: ra_vfs::Vfs::default(),
            loader: vfs_notify::NotifyHandle::spawn(message_sender),
            message_receiver,
            loader_version: 0,
            sessions: HashMap::new(),
            next_session: 0,
        }
    }

    /// Starts a session whose crate is `root_directory` (its `Cargo.toml` and `src/lib.rs`).
    pub(crate) fn open(&mut self, root_directory: &Path) -> Result<SessionId> {
        let root_directory = AbsPathBuf::try_from(
            root_directory
                .to_str()
                .context("Root directory is not UTF-8")?,
        )
        .map_err(|path| anyhow!("Evcxr tmpdir is not absolute: '{:?}'", path))?;
        let source_file = root_directory.join("src/lib.rs");
        // We need to write the file to the filesystem even though we subsequently set the file
        // contents via the vfs and change.change_file. This is because the loader checks for the
        // files existence when determining the crate structure.
        let src_dir = root_directory.join("src");
        std::fs::create_dir_all(&src_dir)
            .with_context(|| format!("Failed to create directory `{src_dir:?}`"))?;
        // Pre-allocate an ID for our main source file.
        let vfs_source_file: ra_vfs::VfsPath = source_file.clone().into();
        self.vfs
            .set_file_contents(vfs_source_file.clone(), Some(vec![]));
        let (source_file_id, _) = self
            .vfs
            .file_id(&vfs_source_file)
            .context("invariant: a file just set has an id")?;
        // A kernel restarted in the same folder can open before the old one's session closed:
        // one crate per folder, the newest.
        let stale: Vec<SessionId> = self
            .sessions
            .iter()
            .filter(|(_, session)| session.root_directory == root_directory)
            .map(|(id, _)| *id)
            .collect();
        for id in stale {
            self.close(id);
        }
        let id = self.next_session;
        self.next_session += 1;
        self.sessions.insert(
            id,
            Session {
                root_directory,
                source_file,
                source_file_id,
                last_cargo_toml: None,
                current_source: String::new(),
                crate_graph: None,
            },
        );
        Ok(id)
    }

    /// Ends a session: its crate leaves the merged graph (the crates it shared stay analysed).
    pub(crate) fn close(&mut self, id: SessionId) {
        if self.sessions.remove(&id).is_some() {
            let mut change = ra_hir::ChangeWithProcMacros::default();
            self.set_merged_crate_graph(&mut change);
            self.analysis_host.apply_change(change);
        }
    }

    fn session(&self, id: SessionId) -> Result<&Session> {
        self.sessions.get(&id).ok_or_else(|| no_session(id))
    }

    /// The sessions in the order they were opened: the merged crate graph and the source roots
    /// list them the same way every time.
    fn sessions_in_order(&self) -> impl Iterator<Item = &Session> {
        let mut ids: Vec<&SessionId> = self.sessions.keys().collect();
        ids.sort();
        ids.into_iter().map(|id| &self.sessions[id])
    }

    pub(crate) fn set_source(&mut self, id: SessionId, source: String) -> Result<()> {
        let mut change = ra_hir::ChangeWithProcMacros::default();
        let session = self.sessions.get_mut(&id).ok_or_else(|| no_session(id))?;
        session.current_source = source;
        std::fs::write(session.source_file.as_path(), &*session.current_source)
            .with_context(|| format!("Failed to write {:?}", session.source_file))?;
        self.vfs.set_file_contents(
            session.source_file.clone().into(),
            Some(session.current_source.bytes().collect()),
        );
        change.change_file(session.source_file_id, Some(session.current_source.clone()));

        // Check to see if we haven't yet loaded Cargo.toml, or if it's changed since we read it.
        let cargo_toml_filename = session.root_directory.join("Cargo.toml");
        let cargo_toml = Some(std::fs::read(&cargo_toml_filename).with_context(|| {
            format!("Failed to read Cargo.toml from `{cargo_toml_filename:?}`")
        })?);
        if cargo_toml != session.last_cargo_toml {
            self.load_cargo_toml(id, cargo_toml_filename, &mut change)?;
            if let Some(session) = self.sessions.get_mut(&id) {
                session.last_cargo_toml = cargo_toml;
            }
        }

        self.analysis_host.apply_change(change);
        Ok(())
    }

    /// Returns top-level variable names and their types in the specified function.
    pub(crate) fn top_level_variables(
        &self,
        id: SessionId,
        function_name: &str,
    ) -> HashMap<String, VariableInfo> {
        use ra_ap_syntax::ast::HasModuleItem;
        use ra_ap_syntax::ast::HasName;
        let mut result = HashMap::new();
        let Ok(session) = self.session(id) else {
            return result;
        };
        let db = self.analysis_host.raw_database();
        let sema = ra_ide::Semantics::new(db);

        let source_file = sema.parse(ra_ap_base_db::EditionedFileId::new(
            db,
            session.source_file_id,
            EDITION,
        ));

        ra_ap_hir::attach_db(db, || {
            for item in source_file.items() {
                if let ast::Item::Fn(function) = item
                    && function
                        .name()
                        .map(|n| n.text() == function_name)
                        .unwrap_or(false)
                {
                    let Some(body) = function.body() else {
                        continue;
                    };
                    let Some(module) = sema.scope(function.syntax()).map(|scope| scope.module())
                    else {
                        continue;
                    };
                    for statement in body.statements() {
                        if let ast::Stmt::LetStmt(let_stmt) = statement
                            && let Some(pat) = let_stmt.pat()
                            && !add_variable_for_pattern(
                                &pat,
                                &sema,
                                let_stmt.ty(),
                                module,
                                &mut result,
                            )
                        {
                            // We didn't add a variable for `pat`, possibly because it's a
                            // more complex pattern that needs destructuring. Try for each
                            // sub pattern. This time, we ignore the explicit type, because
                            // it applies to the whole pattern, not to its parts. Note, this
                            // will attempt `pat` again, but that's OK, since it failed
                            // above, so will fail again.
                            for d in pat.syntax().descendants() {
                                if let Some(sub_pat) = ast::Pat::cast(d) {
                                    add_variable_for_pattern(
                                        &sub_pat,
                                        &sema,
                                        None,
                                        module,
                                        &mut result,
                                    );
                                }
                            }
                        }
                    }
                }
            }
        });

        result
    }

    fn load_cargo_toml(
        &mut self,
        id: SessionId,
        cargo_toml_filename: AbsPathBuf,
        change: &mut ra_hir::ChangeWithProcMacros,
    ) -> Result<()> {
        let manifest = ProjectManifest::from_manifest_file(cargo_toml_filename)?;
        let sysroot = if self.with_sysroot {
            Some(RustLibSource::Discover)
        } else {
            None
        };
        let config = CargoConfig {
            sysroot,
            ..CargoConfig::default()
        };
        let workspace = ProjectWorkspace::load(manifest, &config, &|_| {})?;
        let load = workspace
            .to_roots()
            .iter()
            .map(|root| {
                ra_vfs::loader::Entry::Directories(ra_vfs::loader::Directories {
                    extensions: vec!["rs".to_owned()],
                    include: root.include.clone(),
                    exclude: root.exclude.clone(),
                })
            })
            .collect();
        // The loader reads this session's folders: those of sessions before it are in the Vfs
        // already (nothing is watched, so nothing is dropped), and files that did not change
        // are no change to the Vfs.
        self.loader_version += 1;
        // Note, set_config is what triggers loading and calling the callback that we registered when we created self.loader.
        use ra_vfs::loader::Handle;
        self.loader.set_config(ra_vfs::loader::Config {
            version: self.loader_version,
            load,
            watch: vec![],
        });

        for message in &self.message_receiver {
            match message {
                ra_vfs::loader::Message::Progress {
                    n_total: _,
                    n_done,
                    config_version,
                    ..
                } => {
                    if n_done == LoadingProgress::Finished && config_version == self.loader_version
                    {
                        break;
                    }
                }
                ra_vfs::loader::Message::Loaded { files }
                | ra_vfs::loader::Message::Changed { files } => {
                    for (path, contents) in files {
                        let vfs_path: ra_vfs::VfsPath = path.to_path_buf().into();
                        self.vfs
                            .set_file_contents(vfs_path.clone(), contents.clone());
                    }
                }
            }
        }

        for (file_id, changed_file) in self.vfs.take_changes() {
            let mut new_contents = None;
            if let ra_vfs::Change::Create(v, _hash) | ra_vfs::Change::Modify(v, _hash) =
                changed_file.change
                && let Ok(text) = std::str::from_utf8(&v)
            {
                new_contents = Some(text.to_owned());
            }
            change.change_file(file_id, new_contents);
        }
        change.set_roots(self.source_roots());
        let (crate_graph, _) = workspace.to_crate_graph(
            &mut |path| {
                self.vfs
                    .file_id(&path.to_path_buf().into())
                    .map(|(id, _)| id)
            },
            &FxHashMap::default(),
        );
        if let Some(session) = self.sessions.get_mut(&id) {
            session.crate_graph = Some(crate_graph);
        }
        self.set_merged_crate_graph(change);
        Ok(())
    }

    /// Each session's folder is a local source root of its own, so that a query about one
    /// kernel's crate reads only that crate's files; everything else (the sysroot, the
    /// dependencies) is one library root, which rust-analyzer treats as unchanging between
    /// edits. (Upstream evcxr puts every file in one local root.)
    fn source_roots(&self) -> Vec<SourceRoot> {
        let mut config = ra_vfs::file_set::FileSetConfig::builder();
        for session in self.sessions_in_order() {
            config.add_file_set(vec![session.root_directory.clone().into()]);
        }
        let sets = config.build().partition(&self.vfs);
        let sessions = sets.len() - 1;
        sets.into_iter()
            .enumerate()
            .map(|(index, set)| {
                if index < sessions {
                    SourceRoot::new_local(set)
                } else {
                    SourceRoot::new_library(set)
                }
            })
            .collect()
    }

    /// One crate graph for all sessions: `extend` keeps one copy of each crate they share.
    fn set_merged_crate_graph(&self, change: &mut ra_hir::ChangeWithProcMacros) {
        let mut merged = CrateGraphBuilder::default();
        let mut proc_macros = ProcMacroPaths::default();
        for graph in self
            .sessions_in_order()
            .filter_map(|session| session.crate_graph.as_ref())
        {
            merged.extend(graph.clone(), &mut proc_macros);
        }
        change.set_crate_graph(merged);
    }

    pub(crate) fn completions(&self, id: SessionId, position: usize) -> Result<Completions> {
        let session = self.session(id)?;
        let mut completions = Vec::new();
        let mut range = None;
        let config = ra_ide::CompletionConfig {
            enable_postfix_completions: true,
            snippet_cap: SnippetCap::new(true),
            enable_imports_on_the_fly: false,
            enable_self_on_the_fly: true,
            enable_private_editable: true,
            prefer_no_std: false,
            full_function_signatures: true,
            snippets: vec![],
            insert_use: InsertUseConfig {
                prefix_kind: ra_hir::PrefixKind::ByCrate,
                group: false,
                granularity: ImportGranularity::Item,
                enforce_granularity: false,
                skip_glob_imports: false,
            },
            callable: Some(CallableSnippets::FillArguments),
            limit: None,
            prefer_prelude: false,
            enable_term_search: true,
            term_search_fuel: 400,
            prefer_absolute: false,
            add_semicolon_to_unit: true,
            fields_to_resolve: CompletionFieldsToResolve::empty(),
            exclude_flyimport: vec![],
            exclude_traits: &[],
            enable_auto_iter: true,
            enable_auto_await: true,
            ra_fixture: RaFixtureConfig::default(),
            add_colons_to_module: true,
        };
        if let Ok(Some(completion_items)) = self.analysis_host.analysis().completions(
            &config,
            ra_ide::FilePosition {
                file_id: session.source_file_id,
                offset: (position as u32).into(),
            },
            None,
        ) {
            for item in completion_items {
                use regex::Regex;
                static ARG_PLACEHOLDER: Lazy<Regex> =
                    Lazy::new(|| Regex::new("\\$\\{[0-9]+:([^}]*)\\}").unwrap());
                let mut indels = item.text_edit.iter();
                if let Some(indel) = indels.next() {
                    let text_to_delete = &session.current_source[indel.delete];
                    // Rust analyzer returns all available methods/fields etc. It's up to us to
                    // decide how what we filter and what we keep.
                    if !item.lookup().starts_with(text_to_delete) {
                        continue;
                    }
                    completions.push(Completion {
                        code: ARG_PLACEHOLDER
                            .replace_all(&indel.insert, "$1")
                            .replace("$0", ""),
                        kind: jupyter_kind(item.kind),
                        label: item.label.primary.to_string(),
                    });
                    if let Some(previous_range) = range.as_ref() {
                        if *previous_range != indel.delete {
                            bail!(
                                "Different completions wanted to replace different parts of the text"
                            );
                        }
                    } else {
                        range = Some(indel.delete)
                    }
                }
                if indels.next().is_some() {
                    bail!("Completion unexpectedly provided more than one insertion/deletion");
                }
            }
        }
        Ok(Completions {
            completions,
            start_offset: range.map(|range| range.start().into()).unwrap_or(position),
            end_offset: range.map(|range| range.end().into()).unwrap_or(position),
        })
    }

    pub(crate) fn hover(
        &self,
        id: SessionId,
        text_range: TextRange,
        is_mark_down: bool,
    ) -> Result<Option<String>> {
        let session = self.session(id)?;
        use ra_ide::HoverDocFormat as hdf;
        let hover_config: HoverConfig = HoverConfig {
            links_in_hover: true,
            memory_layout: None,
            documentation: true,
            keywords: true,
            format: if is_mark_down {
                hdf::Markdown
            } else {
                hdf::PlainText
            },
            max_trait_assoc_items_count: None,
            max_fields_count: Some(5),
            max_enum_variants_count: Some(5),
            max_subst_ty_len: SubstTyLen::Unlimited,
            show_drop_glue: false,
            ra_fixture: RaFixtureConfig::default(),
        };
        let file_range = FileRange {
            file_id: session.source_file_id,
            range: text_range,
        };
        match self
            .analysis_host
            .analysis()
            .hover(&hover_config, file_range)
        {
            Ok(range_info) => {
                Ok(range_info.map(|info: RangeInfo<HoverResult>| info.info.markup.into()))
            }
            _ => bail!("hover fail"),
        }
    }
}

/// If `pat` represents a variable that is being defined, then record it in `result` and return
/// true.
fn add_variable_for_pattern(
    pat: &ast::Pat,
    sema: &ra_hir::Semantics<ra_ide::RootDatabase>,
    explicit_type: Option<ast::Type>,
    module: ra_hir::Module,
    result: &mut HashMap<String, VariableInfo>,
) -> bool {
    use ra_ap_syntax::ast::HasName;
    if let ast::Pat::IdentPat(ident_pat) = pat
        && let Some(name) = ident_pat.name()
    {
        let type_name = get_type_name(
            explicit_type,
            sema.type_of_pat(pat).map(|info| info.original()),
            sema,
            module,
        );
        result.insert(
            name.text().to_string(),
            VariableInfo {
                type_name,
                is_mutable: ident_pat.mut_token().is_some(),
            },
        );
        return true;
    }
    false
}

fn get_type_name(
    explicit_type: Option<ast::Type>,
    inferred_type: Option<ra_hir::Type>,
    sema: &ra_hir::Semantics<ra_ide::RootDatabase>,
    module: ra_hir::Module,
) -> TypeName {
    use ra_hir::HirDisplay;
    if let Some(explicit_type) = explicit_type {
        let type_name = explicit_type.syntax().text().to_string();
        if is_type_valid(&type_name) {
            return TypeName::Named(type_name);
        }
    }
    if let Some(ty) = inferred_type {
        if ty.is_closure() {
            return TypeName::Closure;
        }
        if let Ok(type_name) = ty.display_source_code(sema.db, module.into(), true)
            && is_type_valid(&type_name)
        {
            return TypeName::Named(type_name);
        }
    }
    TypeName::Unknown
}

/// Completions found in a particular context.
#[derive(Default, serde::Serialize)]
pub struct Completions {
    pub completions: Vec<Completion>,
    pub start_offset: usize,
    pub end_offset: usize,
}

/// A code completion. We use our own type rather than exposing rust-analyzer's CompletionItem,
/// since rust-analyzer is an internal implementation detail, so we don't want to expose it in a
/// public API.
#[derive(Debug, Eq, PartialEq, serde::Serialize)]
pub struct Completion {
    pub code: String,
    pub kind: &'static str,
    pub label: String,
}

fn jupyter_kind(kind: ra_ide::CompletionItemKind) -> &'static str {
    use ra_ap_ide_db::SymbolKind;
    use ra_ide::CompletionItemKind as K;
    match kind {
        K::SymbolKind(SymbolKind::Function | SymbolKind::Method) => "function",
        K::SymbolKind(
            SymbolKind::Struct
            | SymbolKind::Enum
            | SymbolKind::Union
            | SymbolKind::Trait
            | SymbolKind::TypeAlias
            | SymbolKind::TypeParam
            | SymbolKind::SelfType,
        ) => "class",
        K::SymbolKind(SymbolKind::Module | SymbolKind::CrateRoot | SymbolKind::ToolModule) => {
            "module"
        }
        K::SymbolKind(
            SymbolKind::Const
            | SymbolKind::Static
            | SymbolKind::ConstParam
            | SymbolKind::Variant
            | SymbolKind::Field
            | SymbolKind::Local
            | SymbolKind::SelfParam
            | SymbolKind::ValueParam
            | SymbolKind::Label,
        )
        | K::Binding
        | K::InferredType => "instance",
        K::SymbolKind(
            SymbolKind::Macro
            | SymbolKind::ProcMacro
            | SymbolKind::Derive
            | SymbolKind::DeriveHelper
            | SymbolKind::Attribute
            | SymbolKind::BuiltinAttr,
        ) => "function",
        K::Keyword => "keyword",
        K::Snippet | K::BuiltinType | K::UnresolvedReference | K::Expression => "instance",
        _ => "instance",
    }
}

/// Returns whether this appears to be a valid type. Rust analyzer, when asked to emit code for some
/// types, produces invalid code. In particular, fixed sized arrays come out without a size. e.g.
/// instead of `[i32, 5]`, we get `[i32, _]`.
pub(crate) fn is_type_valid(type_name: &str) -> bool {
    use ra_ap_syntax::SyntaxKind;
    let wrapped_source = format!("const _: {type_name} = foo();");
    let parsed = ast::SourceFile::parse(&wrapped_source, EDITION);
    if !parsed.errors().is_empty() {
        return false;
    }
    for node in parsed.syntax_node().descendants() {
        if node.kind() == SyntaxKind::ERROR || node.kind() == SyntaxKind::INFER_TYPE {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod test {
    use super::RustAnalyzer;
    use super::TypeName;
    use super::is_type_valid;
    use anyhow::Result;

    impl TypeName {
        fn named(name: &str) -> TypeName {
            TypeName::Named(name.to_owned())
        }
    }

    #[test]
    fn get_variable_types() -> Result<()> {
        let tmpdir = tempfile::tempdir()?;
        let mut ra = RustAnalyzer::with_backend(
            tmpdir.path(),
            RustAnalyzer::local_backend(tmpdir.path(), false)?,
        );
        std::fs::write(
            tmpdir.path().join("Cargo.toml"),
            r#"
            [package]
            name = "foo"
            version = "0.1.0"
            edition = "2024"

            [lib]
            "#,
        )?;

        ra.set_source(
            r#"
            struct Foo<const I: usize> {}
            struct Point {x: u8, y: u8}
            fn foo() {
                let v1 = true;
                let mut v1 = 42i32;
                let v2 = &[false];
                let v3: Foo<10> = Foo::<10> {};
                {
                    let v2 = false;
                    let v100 = true;
                }
                let (v4, ..) = (42u64, 43, 44);
                let p1 = Point {x: 1, y: 2};
                let Point {x, y: y2} = p1;
            }
            fn foo2() {
                let v9 = true;
            }"#
            .to_owned(),
        )?;
        let var_types = ra.top_level_variables("foo");
        assert_eq!(var_types["v1"].type_name, TypeName::named("i32"));
        assert!(var_types["v1"].is_mutable);
        assert_eq!(var_types["v2"].type_name, TypeName::named("&[bool; 1]"));
        assert!(!var_types["v2"].is_mutable);
        assert_eq!(var_types["v3"].type_name, TypeName::named("Foo<10>"));
        assert!(!var_types.contains_key("v100"));
        assert_eq!(var_types["v4"].type_name, TypeName::named("u64"));
        assert_eq!(var_types["x"].type_name, TypeName::named("u8"));
        assert_eq!(var_types["y2"].type_name, TypeName::named("u8"));

        ra.set_source(
            r#"
            fn foo() {
                let v1 = 1u16;
            }"#
            .to_owned(),
        )?;
        let var_types = ra.top_level_variables("foo");
        assert_eq!(var_types["v1"].type_name, TypeName::named("u16"));
        assert!(!var_types.contains_key("v2"));

        Ok(())
    }

    /// Two kernels' crates in one engine (the shared analyzer): each gets its own variables'
    /// types, the dependency they share is one crate in the merged graph, and closing one
    /// session leaves the other working.
    #[test]
    fn sessions_share_their_common_crates() -> Result<()> {
        use super::Engine;
        let tmpdir = tempfile::tempdir()?;
        let write = |path: &str, text: &str| -> Result<()> {
            let path = tmpdir.path().join(path);
            std::fs::create_dir_all(path.parent().unwrap())?;
            std::fs::write(path, text)?;
            Ok(())
        };
        write(
            "petals/Cargo.toml",
            "[package]\nname = \"petals\"\nversion = \"0.1.0\"\nedition = \"2024\"\n",
        )?;
        write(
            "petals/src/lib.rs",
            "pub struct Petal { pub length: u16 }\npub fn first() -> Petal { Petal { length: 3 } }\n",
        )?;
        for kernel in ["a", "b"] {
            write(
                &format!("{kernel}/Cargo.toml"),
                &format!(
                    "[package]\nname = \"{kernel}\"\nversion = \"0.1.0\"\nedition = \"2024\"\n\
                     [lib]\n[dependencies]\npetals = {{ path = \"../petals\" }}\n"
                ),
            )?;
        }
        let mut engine = Engine::new(false);
        let a = engine.open(&tmpdir.path().join("a"))?;
        let b = engine.open(&tmpdir.path().join("b"))?;
        engine.set_source(
            a,
            "fn f() { let p = petals::first(); let n = 1u8; }".to_owned(),
        )?;
        engine.set_source(b, "fn f() { let q = petals::first().length; }".to_owned())?;
        let in_a = engine.top_level_variables(a, "f");
        let in_b = engine.top_level_variables(b, "f");
        assert_eq!(in_a["p"].type_name, TypeName::named("petals::Petal"));
        assert_eq!(in_a["n"].type_name, TypeName::named("u8"));
        assert!(!in_a.contains_key("q"));
        assert_eq!(in_b["q"].type_name, TypeName::named("u16"));
        // a, b and one petals.
        let db = engine.analysis_host.raw_database();
        assert_eq!(ra_ap_base_db::all_crates(db).len(), 3);

        engine.close(a);
        engine.set_source(b, "fn f() { let r = petals::first(); }".to_owned())?;
        assert_eq!(
            engine.top_level_variables(b, "f")["r"].type_name,
            TypeName::named("petals::Petal")
        );
        assert_eq!(
            ra_ap_base_db::all_crates(engine.analysis_host.raw_database()).len(),
            2
        );
        assert!(engine.set_source(a, String::new()).is_err());
        Ok(())
    }

    #[test]
    fn test_is_type_valid() {
        assert!(is_type_valid("Vec<String>"));
        assert!(is_type_valid("&[i32]"));
        assert!(!is_type_valid("[i32, _]"));
        assert!(!is_type_valid("Vec<_>"));
        assert!(is_type_valid("Foo<42>"));
    }
}
