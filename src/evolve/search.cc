#include "evolve/search.h"

#include <fmt/format.h>

#include <chrono>
#include <cmath>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>

#include "core/error.h"
#include "core/fs.h"
#include "core/interrupt.h"
#include "core/log.h"
#include "evolve/cmaes.h"
#include "evolve/fitness.h"
#include "evolve/genome.h"
#include "evolve/plot.h"
#include "evolve/resident.h"
#include "merge/finalize.h"
#include "recipe/recipe.h"
#include "tokenizer/tokenizer.h"

namespace amalgam::evolve {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

fs::path model_directory(const fs::path& model) {
  return fs::is_regular_file(model) ? model.parent_path() : model;
}

// Writes `text` to `path` through a temporary file and a rename: a crash leaves the old file or
// the new one, never half of one.
void write_atomically(const fs::path& path, const std::string& text) {
  const fs::path tmp = path.string() + ".tmp";
  core::write_text_file(tmp, text);
  std::error_code ec;
  fs::rename(tmp, path, ec);
  if (ec) fail("{}: cannot replace: {}", path.string(), ec.message());
}

struct Candidate {
  double fitness = 0;
  std::vector<double> scores;
  double merge_seconds = 0, eval_seconds = 0;
  bool cached = false;
};

// Per generation, for the curves.
struct GenerationRecord {
  double best_so_far = 0, generation_best = 0, generation_mean = 0;
  std::optional<double> validation;  // of the best so far
};

struct Best {
  double fitness = -std::numeric_limits<double>::infinity();
  std::string recipe;
  std::vector<double> unit;
  std::optional<double> validation;
};

class SearchRun {
 public:
  SearchRun(const EvolveConfig& config, const SearchOptions& options, Comm& comm)
      : config_(config),
        options_(options),
        comm_(comm),
        resident_(inputs_, options.merge_threads, config.seed),
        tokenizer_(tokenizer::Tokenizer::from_directory(model_directory(config.models[0]))),
        fitness_(config.tasks, tokenizer_) {
    if (!config.validation.empty()) validation_.emplace(config.validation, tokenizer_);
    plan_options_.inputs = &inputs_;
    plan_options_.base_dir = config.source.has_parent_path() ? config.source.parent_path() : ".";
  }

  SearchResult run() {
    const auto start = Clock::now();
    if (rank0()) fs::create_directories(options_.run_dir);
    json state = load_state();
    const bool ps = config_.search != Search::kDataFlow;
    const bool dfs = config_.search != Search::kParameterSpace;
    const int64_t stages = ps && dfs ? 2 : 1;
    int64_t stage = state.is_null() ? 0 : state.value("stage", 0);
    elapsed_before_ = state.is_null() ? 0.0 : state.value("elapsed", 0.0);
    for (; stage < stages; ++stage) {
      const bool this_ps = ps && stage == 0;
      // PS+DFS: the PS stage gets half the budget, the DFS stage what is left.
      const int64_t budget =
          stages == 2 && stage == 0 ? config_.max_evaluations / 2 : config_.max_evaluations;
      std::unique_ptr<Genome> genome =
          this_ps ? std::unique_ptr<Genome>(std::make_unique<PsGenome>(config_, ps_models()))
                  : std::unique_ptr<Genome>(std::make_unique<DfsGenome>(config_, dfs_models()));
      const json stage_state =
          !state.is_null() && state.value("stage", 0) == stage ? state : json();
      run_stage(stage, this_ps ? "ps" : "dfs", *genome, budget, stage_state);
      if (stopped_) break;
      if (stages == 2 && stage == 0) {
        // The PS result becomes the first model of the DFS stage.
        if (rank0()) write_model(best_.recipe, ps_best_dir(), /*force=*/true);
        state = json();  // the DFS stage starts fresh
        history_.clear();
        best_ = Best{};
      }
    }
    if (paused_) {
      SearchResult paused;
      paused.paused = true;
      paused.best_fitness = best_.fitness;
      paused.best_recipe = best_.recipe;
      paused.evaluations = evaluations_;
      paused.generations = static_cast<int64_t>(history_.size());
      return paused;
    }
    if (stopped_) {
      fail("interrupted: the search stopped; continue it with --resume (state in {})",
           (options_.run_dir / "state.json").string());
    }
    SearchResult result;
    result.best_fitness = best_.fitness;
    result.best_recipe = best_.recipe;
    result.evaluations = evaluations_;
    result.generations = static_cast<int64_t>(history_.size());
    result.seconds = elapsed_before_ + seconds_since(start);
    result.merge_seconds = merge_seconds_;
    if (rank0()) {
      if (options_.write_best) write_model(best_.recipe, options_.run_dir / "best", true);
      summarize(result);
    }
    return result;
  }

 private:
  bool rank0() const { return comm_.rank() == 0; }
  fs::path ps_best_dir() const { return options_.run_dir / "ps-best"; }

  SearchModel search_model(const fs::path& path) {
    SearchModel m;
    m.path = fs::absolute(path).lexically_normal();
    m.num_layers = inputs_.config(model_directory(m.path)).num_layers;
    m.label = model_label(m.path);
    return m;
  }

  std::vector<SearchModel> ps_models() {
    std::vector<SearchModel> out;
    for (const auto& m : config_.models) out.push_back(search_model(m));
    return out;
  }

  std::vector<SearchModel> dfs_models() {
    std::vector<SearchModel> out;
    if (config_.search == Search::kBoth) out.push_back(search_model(ps_best_dir()));
    for (const auto& m : config_.models) out.push_back(search_model(m));
    return out;
  }

  merge::Plan plan_of(const std::string& recipe_text) {
    return recipe::plan_from_yaml(recipe_text, "candidate recipe", plan_options_);
  }

  Candidate evaluate(const std::string& recipe_text) {
    auto it = cache_.find(recipe_text);
    if (it != cache_.end()) {
      Candidate c = it->second;
      c.cached = true;
      c.merge_seconds = c.eval_seconds = 0;
      return c;
    }
    Candidate c;
    const merge::Plan plan = plan_of(recipe_text);
    const auto model = resident_.update(plan);
    c.merge_seconds = resident_.last().seconds;
    const auto t = Clock::now();
    const std::vector<TaskScore> scores = fitness_.score(*model);
    c.eval_seconds = seconds_since(t);
    for (const auto& s : scores) c.scores.push_back(s.value);
    c.fitness = fitness_.fitness(scores);
    cache_.emplace(recipe_text, c);
    return c;
  }

  // Mean validation accuracy of a recipe (exact match on the validation items).
  std::optional<double> validate(const std::string& recipe_text) {
    if (!validation_) return std::nullopt;
    const auto model = resident_.update(plan_of(recipe_text));
    const auto acc = validation_->accuracy(*model);
    double sum = 0;
    for (const auto& a : acc) sum += a.value;
    return sum / static_cast<double>(acc.size());
  }

  json load_state() {
    const fs::path path = options_.run_dir / "state.json";
    if (!options_.resume) {
      if (rank0() && fs::exists(path)) {
        fail(
            "{} holds a search already (state.json); continue it with --resume or choose another "
            "run directory",
            options_.run_dir.string());
      }
      return json();
    }
    if (!fs::exists(path)) {
      fail("--resume: no state.json in {}; nothing to continue", options_.run_dir.string());
    }
    json state = json::parse(core::read_text_file(path));
    if (state.value("config", std::string()) != config_.text) {
      fail(
          "--resume: the config differs from the one {} was started with; a resumed search must "
          "use the same config",
          options_.run_dir.string());
    }
    return state;
  }

  void save_state(int64_t stage, const CmaEs& es) {
    json history = json::array();
    for (const auto& h : history_) {
      history.push_back({{"best_so_far", h.best_so_far},
                         {"generation_best", h.generation_best},
                         {"generation_mean", h.generation_mean},
                         {"validation", h.validation ? json(*h.validation) : json()}});
    }
    json state = {{"version", 1},
                  {"config", config_.text},
                  {"stage", stage},
                  {"optimizer", es.to_json()},
                  {"evaluations", evaluations_},
                  {"stage_evaluations", stage_evaluations_},
                  {"log_lines", log_lines_},
                  {"elapsed", elapsed_before_ + seconds_since(started_)},
                  {"merge_seconds", merge_seconds_},
                  {"best",
                   {{"fitness", best_.fitness},
                    {"recipe", best_.recipe},
                    {"unit", best_.unit},
                    {"validation", best_.validation ? json(*best_.validation) : json()}}},
                  {"history", history}};
    write_atomically(options_.run_dir / "state.json", state.dump(1));
  }

  void restore(const json& s) {
    evaluations_ = s.at("evaluations").get<int64_t>();
    stage_evaluations_ = s.at("stage_evaluations").get<int64_t>();
    log_lines_ = s.at("log_lines").get<int64_t>();
    merge_seconds_ = s.value("merge_seconds", 0.0);
    const json& b = s.at("best");
    best_.fitness = b.at("fitness").get<double>();
    best_.recipe = b.at("recipe").get<std::string>();
    best_.unit = b.at("unit").get<std::vector<double>>();
    if (!b.at("validation").is_null()) best_.validation = b.at("validation").get<double>();
    history_.clear();
    for (const auto& h : s.at("history")) {
      GenerationRecord r;
      r.best_so_far = h.at("best_so_far");
      r.generation_best = h.at("generation_best");
      r.generation_mean = h.at("generation_mean");
      if (!h.at("validation").is_null()) r.validation = h.at("validation").get<double>();
      history_.push_back(r);
    }
    if (rank0()) truncate_log();
  }

  // Drops log lines of a generation that a crash interrupted.
  void truncate_log() {
    const fs::path path = options_.run_dir / "log.jsonl";
    if (!fs::exists(path)) return;
    std::ifstream in(path);
    std::string line, kept;
    for (int64_t i = 0; i < log_lines_ && std::getline(in, line); ++i) kept += line + "\n";
    write_atomically(path, kept);
  }

  void append_log(const std::string& lines) {
    std::ofstream out(options_.run_dir / "log.jsonl", std::ios::app);
    out << lines;
    out.flush();
    if (!out) fail("{}: cannot append to the log", (options_.run_dir / "log.jsonl").string());
  }

  void write_curves() {
    Series best{"best so far", "#1f77b4", {}}, mean{"generation mean", "#aaaaaa", {}},
        top{"generation best", "#ff7f0e", {}}, val{"validation (best)", "#2ca02c", {}};
    for (const auto& h : history_) {
      best.y.push_back(h.best_so_far);
      mean.y.push_back(h.generation_mean);
      top.y.push_back(h.generation_best);
      val.y.push_back(h.validation);
    }
    std::vector<Series> series = {mean, top, best};
    if (validation_) series.push_back(val);
    write_atomically(
        options_.run_dir / "fitness.svg",
        line_chart_svg(fmt::format("amalgam evolve: {} ({})", config_.source.filename().string(),
                                   search_name(config_.search)),
                       "fitness (validation: accuracy)", series));
  }

  void run_stage(int64_t stage, const std::string& name, const Genome& genome, int64_t budget,
                 const json& state) {
    CmaEsOptions o;
    o.x0 = genome.initial_unit();
    o.sigma0 = config_.sigma0.value_or(1.0 / 6.0);  // the unit box's range / 6
    o.lower.assign(genome.size(), 0.0);
    o.upper.assign(genome.size(), 1.0);
    if (config_.population) o.population = *config_.population;
    o.seed = config_.seed + static_cast<uint64_t>(stage);
    CmaEs es = state.is_null() ? CmaEs(o)
                               : CmaEs::from_json(state.at("optimizer"),
                                                  (options_.run_dir / "state.json").string());
    if (!state.is_null()) {
      restore(state);
    } else {
      stage_evaluations_ = 0;
    }
    started_ = Clock::now();
    const size_t tasks = config_.tasks.size();
    const size_t width = tasks + 3;  // fitness, scores..., merge s, eval s
    if (rank0()) {
      core::info("evolve {}: {} genes, population {}, budget {} evaluations{}", name, genome.size(),
                 es.population_size(), budget,
                 comm_.size() > 1 ? fmt::format(", {} ranks", comm_.size()) : std::string());
    }
    while (stage_evaluations_ < budget && evaluations_ < config_.max_evaluations) {
      if (options_.pause_after_generations > 0 &&
          generations_here_ >= options_.pause_after_generations) {
        paused_ = stopped_ = true;
        return;
      }
      if (config_.max_minutes &&
          elapsed_before_ + seconds_since(started_) > *config_.max_minutes * 60) {
        break;
      }
      const std::vector<std::vector<double>> xs = es.ask();  // a copy: tell() replaces them
      std::vector<std::string> recipes;
      for (const auto& x : xs) recipes.push_back(genome.recipe(x));
      std::vector<double> table(xs.size() * width, 0.0);
      std::vector<double> cached(xs.size(), 0.0);
      bool interrupted = false;
      for (size_t i = 0; i < xs.size(); ++i) {
        if (static_cast<int>(i % static_cast<size_t>(comm_.size())) != comm_.rank()) continue;
        if (core::interrupted()) {
          interrupted = true;
          break;
        }
        const Candidate c = evaluate(recipes[i]);
        double* row = table.data() + i * width;
        row[0] = c.fitness;
        for (size_t t = 0; t < tasks; ++t) row[1 + t] = c.scores[t];
        row[tasks + 1] = c.merge_seconds;
        row[tasks + 2] = c.eval_seconds;
        cached[i] = c.cached ? 1.0 : 0.0;
      }
      if (comm_.any(interrupted)) {
        stopped_ = true;
        return;
      }
      comm_.sum(table);
      comm_.sum(cached);
      std::vector<double> loss(xs.size());
      double gen_best = -std::numeric_limits<double>::infinity(), gen_sum = 0;
      size_t gen_best_i = 0;
      std::string log;
      for (size_t i = 0; i < xs.size(); ++i) {
        const double* row = table.data() + i * width;
        loss[i] = -row[0];  // CMA-ES minimises
        gen_sum += row[0];
        if (row[0] > gen_best) {
          gen_best = row[0];
          gen_best_i = i;
        }
        merge_seconds_ += row[tasks + 1];
        json scores = json::object();
        for (size_t t = 0; t < tasks; ++t)
          scores[config_.tasks[t].file.stem().string()] = row[1 + t];
        log += json{{"stage", name},
                    {"generation", static_cast<int64_t>(history_.size())},
                    {"evaluation", evaluations_ + static_cast<int64_t>(i)},
                    {"genes", genome.values(xs[i])},
                    {"fitness", row[0]},
                    {"scores", scores},
                    {"merge_seconds", row[tasks + 1]},
                    {"eval_seconds", row[tasks + 2]},
                    {"cached", cached[i] != 0},
                    {"recipe", recipes[i]}}
                   .dump() +
               "\n";
      }
      es.tell(loss);
      ++generations_here_;
      evaluations_ += static_cast<int64_t>(xs.size());
      stage_evaluations_ += static_cast<int64_t>(xs.size());
      log_lines_ += static_cast<int64_t>(xs.size());
      GenerationRecord record;
      record.generation_best = gen_best;
      record.generation_mean = gen_sum / static_cast<double>(xs.size());
      if (gen_best > best_.fitness) {
        best_.fitness = gen_best;
        best_.recipe = recipes[gen_best_i];
        best_.unit = xs[gen_best_i];
        if (rank0()) best_.validation = validate(best_.recipe);
      }
      record.best_so_far = best_.fitness;
      record.validation = best_.validation;
      history_.push_back(record);
      if (rank0()) {
        append_log(log);
        write_atomically(options_.run_dir / "best.yaml",
                         fmt::format("# amalgam evolve: best of {} evaluations, fitness {:.4f}\n{}",
                                     evaluations_, best_.fitness, best_.recipe));
        write_curves();
        save_state(stage, es);
        const double minutes = (elapsed_before_ + seconds_since(started_)) / 60.0;
        core::info("{} gen {:3d} | {:4d}/{} evals | {:.1f} evals/min | best {:.4f}{}", name,
                   history_.size(), stage_evaluations_, budget,
                   minutes > 0 ? static_cast<double>(evaluations_) / minutes : 0.0, best_.fitness,
                   best_.validation ? fmt::format(" | validation {:.3f}", *best_.validation)
                                    : std::string());
      }
    }
  }

  void write_model(const std::string& recipe_text, const fs::path& out, bool force) {
    merge::Plan plan = plan_of(recipe_text);
    plan.recipe_text = recipe_text;
    merge::OutputOptions o;
    o.force = force;
    o.execute.threads = options_.merge_threads;
    o.execute.seed = config_.seed;
    o.execute.progress = false;
    merge::write_model(plan, inputs_, out, o);
  }

  // A model directory evaluated as it is.
  std::unique_ptr<infer::Model> load_model(const fs::path& path) {
    const io::Checkpoint& ckpt = inputs_.open(path);
    return std::make_unique<infer::Model>(inputs_.config(ckpt.directory()),
                                          infer::checkpoint_weights(ckpt));
  }

  SummaryRow row_of(const std::string& name, const std::string& kind, const infer::Model& model) {
    SummaryRow r{name, kind, fitness_.fitness(fitness_.score(model)), {}, {}};
    for (const auto& a : fitness_.accuracy(model)) r.accuracy.push_back(a.value);
    if (validation_) {
      for (const auto& a : validation_->accuracy(model)) r.validation.push_back(a.value);
    }
    return r;
  }

  void summarize(SearchResult& result) {
    for (const auto& t : config_.tasks) result.task_names.push_back(t.file.stem().string());
    for (const auto& t : config_.validation) {
      result.validation_names.push_back(t.file.stem().string());
    }
    for (const auto& m : config_.models) {
      result.summary.push_back(row_of(model_label(m), "model", *load_model(m)));
    }
    for (const auto& b : config_.baselines) {
      const auto model =
          resident_.update(recipe::plan_from_file(b, recipe::PlanOptions{.inputs = &inputs_}));
      result.summary.push_back(row_of(b.filename().string(), "baseline", *model));
    }
    result.summary.push_back(
        row_of("evolved (best.yaml)", "evolved", *resident_.update(plan_of(best_.recipe))));
    json rows = json::array();
    for (const auto& r : result.summary) {
      rows.push_back({{"name", r.name},
                      {"kind", r.kind},
                      {"fitness", r.fitness},
                      {"accuracy", r.accuracy},
                      {"validation", r.validation}});
    }
    const json summary = {{"search", search_name(config_.search)},
                          {"evaluations", result.evaluations},
                          {"generations", result.generations},
                          {"seconds", result.seconds},
                          {"merge_seconds", result.merge_seconds},
                          {"ranks", comm_.size()},
                          {"tasks", result.task_names},
                          {"validation_tasks", result.validation_names},
                          {"rows", rows}};
    write_atomically(options_.run_dir / "summary.json", summary.dump(1));
  }

  const EvolveConfig& config_;
  const SearchOptions& options_;
  Comm& comm_;
  merge::InputSet inputs_;
  ResidentModel resident_;
  tokenizer::Tokenizer tokenizer_;
  Evaluator fitness_;
  std::optional<Evaluator> validation_;
  recipe::PlanOptions plan_options_;
  std::map<std::string, Candidate> cache_;
  Best best_;
  std::vector<GenerationRecord> history_;
  int64_t evaluations_ = 0, stage_evaluations_ = 0, log_lines_ = 0;
  double merge_seconds_ = 0, elapsed_before_ = 0;
  Clock::time_point started_ = Clock::now();
  bool stopped_ = false;
  bool paused_ = false;
  int64_t generations_here_ = 0;  // generations run by this process
};

}  // namespace

SearchResult run_search(const EvolveConfig& config, const SearchOptions& options, Comm& comm) {
  return SearchRun(config, options, comm).run();
}

std::string summary_table(const SearchResult& r) {
  std::string head = fmt::format("{:<28} {:>8}", "model", "fitness");
  for (const auto& t : r.task_names) head += fmt::format(" {:>10}", t);
  for (const auto& t : r.validation_names) head += fmt::format(" {:>10}", "val:" + t);
  std::string out = head + "\n" + std::string(head.size(), '-') + "\n";
  for (const auto& row : r.summary) {
    std::string line = fmt::format("{:<28} {:>8.4f}", row.name, row.fitness);
    for (double a : row.accuracy) line += fmt::format(" {:>10.3f}", a);
    for (double a : row.validation) line += fmt::format(" {:>10.3f}", a);
    out += line + "\n";
  }
  return out;
}

}  // namespace amalgam::evolve
