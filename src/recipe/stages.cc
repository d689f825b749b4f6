#include "recipe/stages.h"

#include <algorithm>
#include <functional>
#include <map>
#include <optional>

#include "core/error.h"
#include "core/fs.h"
#include "core/log.h"
#include "core/sha256.h"
#include "core/yaml.h"

namespace amalgam::recipe {

namespace fs = std::filesystem;

namespace {

// Every model reference of a recipe, in the order a reader meets them.
template <typename F>
void for_each_ref(Recipe& recipe, F&& visit) {
  for (auto& m : recipe.models) visit(m.model);
  if (recipe.base_model) visit(*recipe.base_model);
  for (auto& slice : recipe.slices) {
    for (auto& s : slice.sources) visit(s.model);
    if (slice.base_model) visit(*slice.base_model);
  }
  if (recipe.tokenizer_model) visit(*recipe.tokenizer_model);
}

std::string label(const Recipe& r) {
  return r.name ? "stage '" + *r.name + "'" : "the unnamed stage";
}

void check_name(const Recipe& r) {
  const std::string& n = *r.name;
  const bool bad = n.empty() || n == "." || n == ".." ||
                   n.find_first_of("/\\") != std::string::npos ||
                   std::any_of(n.begin(), n.end(), [](char c) { return c >= 0 && c < 0x20; });
  if (bad) {
    fail_at(r.where, r.name_at,
            "name: '{}' cannot name a stage: its output is the directory <intermediates>/{}, so "
            "use a plain name without slashes",
            n, n);
  }
}

struct Edge {
  size_t to;
  Location at;  // the reference
};

// Fails at the reference that closes a cycle, showing the whole loop.
void check_acyclic(const std::vector<Recipe>& docs, const std::vector<std::vector<Edge>>& edges) {
  enum Color { kWhite, kGray, kBlack };
  std::vector<Color> color(docs.size(), kWhite);
  std::vector<size_t> stack;
  std::function<void(size_t)> visit = [&](size_t i) {
    color[i] = kGray;
    stack.push_back(i);
    for (const Edge& e : edges[i]) {
      if (color[e.to] == kGray) {
        std::vector<std::string> loop;
        auto from = std::find(stack.begin(), stack.end(), e.to);
        for (auto it = from; it != stack.end(); ++it) loop.push_back(*docs[*it].name);
        loop.push_back(*docs[e.to].name);
        fail_at(docs[i].where, e.at,
                "{} reads stage '{}', and the stages form a cycle ({}); a stage may read "
                "only stages that do not read it back",
                label(docs[i]), *docs[e.to].name, join(loop, " -> "));
      }
      if (color[e.to] == kWhite) visit(e.to);
    }
    stack.pop_back();
    color[i] = kBlack;
  };
  for (size_t i = 0; i < docs.size(); ++i) {
    if (color[i] == kWhite) visit(i);
  }
}

fs::path default_intermediate_dir(const fs::path& out) {
  fs::path target = fs::absolute(out).lexically_normal();
  if (target.filename().empty()) target = target.parent_path();
  return target.parent_path() / (target.filename().string() + ".stages");
}

fs::path hash_file(const Stage& stage) {
  return stage.out.parent_path() / (stage.out.filename().string() + ".recipe-sha256");
}

bool up_to_date(const Stage& stage) {
  std::error_code ec;
  const bool has_weights = fs::exists(stage.out / "model.safetensors", ec) ||
                           fs::exists(stage.out / "model.safetensors.index.json", ec);
  if (!has_weights || !fs::exists(stage.out / "config.json", ec) ||
      !fs::exists(hash_file(stage), ec)) {
    return false;
  }
  try {
    return core::read_text_file(hash_file(stage)) == stage.hash + "\n";
  } catch (const Error&) {
    return false;
  }
}

void remove_intermediates(const std::vector<Stage>& stages, const fs::path& dir) {
  for (size_t i = 0; i + 1 < stages.size(); ++i) {
    std::error_code ec;
    fs::remove_all(stages[i].out, ec);
    if (!ec) fs::remove(hash_file(stages[i]), ec);
    if (ec) core::warn("could not remove {}: {}", stages[i].out.string(), ec.message());
  }
  std::error_code ec;
  if (fs::is_directory(dir, ec) && fs::is_empty(dir, ec)) fs::remove(dir, ec);
}

}  // namespace

bool is_multi_stage(const std::string& yaml_text) {
  try {
    size_t documents = 0;
    for (const auto& d : yaml::load_all(yaml_text, "recipe")) documents += d.is_null() ? 0 : 1;
    return documents > 1;
  } catch (const Error&) {  // malformed: not this form (the recipe parser reports it)
    return false;
  }
}

std::vector<Stage> plan_stages(const std::string& yaml_text, const std::string& where,
                               const fs::path& out, const StageOptions& options) {
  std::vector<Recipe> docs = parse_recipe_documents(yaml_text, where);
  std::map<std::string, size_t> by_name;
  std::vector<std::string> names;
  std::optional<size_t> unnamed;
  for (size_t i = 0; i < docs.size(); ++i) {
    const Recipe& r = docs[i];
    if (!r.name) {
      if (unnamed) {
        fail_at(where, r.merge_method_at,
                "a second document without 'name:' (the first is at line {}); only the final "
                "stage may be unnamed: name this one and refer to it by that name",
                docs[*unnamed].merge_method_at.line);
      }
      unnamed = i;
      continue;
    }
    check_name(r);
    auto [it, added] = by_name.emplace(*r.name, i);
    if (!added) {
      fail_at(where, r.name_at, "stage name '{}' is used twice (first at line {}); rename one",
              *r.name, docs[it->second].name_at.line);
    }
    names.push_back(*r.name);
  }

  size_t final_index = unnamed.value_or(docs.size() - 1);
  if (!options.final_stage.empty()) {
    auto it = by_name.find(options.final_stage);
    if (it == by_name.end()) {
      fail("{}: no stage is named '{}'{}; stages: {}", where, options.final_stage,
           did_you_mean(options.final_stage, names), join(names));
    }
    final_index = it->second;
  }

  // Edges from each document to the stages it reads; other references must be existing paths.
  std::vector<std::vector<Edge>> edges(docs.size());
  for (size_t i = 0; i < docs.size(); ++i) {
    for_each_ref(docs[i], [&](ModelRef& ref) {
      auto it = by_name.find(ref.path);
      if (it != by_name.end()) {
        edges[i].push_back(Edge{it->second, ref.at});
        return;
      }
      // path@revision and path+lora get their own messages when the stage is planned.
      if (ref.path.find_first_of("@+") != std::string::npos) return;
      fs::path p(ref.path);
      if (p.is_relative()) p = options.plan.base_dir / p;
      std::error_code ec;
      if (fs::exists(p, ec)) return;
      fail_at(where, ref.at,
              "'{}' is neither a stage of this recipe nor an existing model path{}; stages: {}",
              ref.path, did_you_mean(ref.path, names), names.empty() ? "(none)" : join(names));
    });
  }
  check_acyclic(docs, edges);

  // Dependency order: depth first from the final stage, each stage after what it reads.
  std::vector<size_t> order;
  std::vector<bool> placed(docs.size(), false);
  std::function<void(size_t)> place = [&](size_t i) {
    if (placed[i]) return;
    placed[i] = true;
    for (const Edge& e : edges[i]) place(e.to);
    order.push_back(i);
  };
  place(final_index);
  for (size_t i = 0; i < docs.size(); ++i) {
    if (!placed[i]) {
      core::warn("{}{} is not read by the final one ({}); it is not run",
                 prefix(where, docs[i].name ? docs[i].name_at : docs[i].merge_method_at),
                 label(docs[i]), label(docs[final_index]));
    }
  }

  const fs::path dir = options.intermediate_dir.empty()
                           ? default_intermediate_dir(out)
                           : fs::absolute(options.intermediate_dir).lexically_normal();
  std::vector<Stage> stages;
  std::map<size_t, size_t> stage_of;  // document index -> index in `stages`
  for (size_t i : order) {
    Stage s;
    s.name = docs[i].name.value_or("");
    s.recipe = std::move(docs[i]);
    s.out = i == final_index ? fs::absolute(out).lexically_normal() : dir / s.name;
    std::string key = fmt::format("amalgam stage v1\nseed {}\nbase_dir {}\n", options.seed,
                                  fs::absolute(options.plan.base_dir).lexically_normal().string());
    for (const Edge& e : edges[i]) {
      const Stage& needed = stages[stage_of.at(e.to)];
      if (std::find(s.needs.begin(), s.needs.end(), stage_of.at(e.to)) == s.needs.end()) {
        s.needs.push_back(stage_of.at(e.to));
      }
      key += fmt::format("reads {} {}\n", needed.name, needed.hash);
    }
    key += s.recipe.text;
    s.hash = core::sha256_hex(reinterpret_cast<const uint8_t*>(key.data()), key.size());
    for_each_ref(s.recipe, [&](ModelRef& ref) {
      auto it = by_name.find(ref.path);
      if (it != by_name.end()) ref.path = stages[stage_of.at(it->second)].out.string();
    });
    stage_of[i] = stages.size();
    stages.push_back(std::move(s));
  }
  return stages;
}

StagesReport run_stages(const std::string& yaml_text, const std::string& where, const fs::path& out,
                        const StageOptions& options, const StageWriter& write) {
  const std::vector<Stage> stages = plan_stages(yaml_text, where, out, options);
  const Stage& final_stage = stages.back();
  std::error_code ec;
  if (!options.force && fs::is_directory(final_stage.out, ec) &&
      !fs::is_empty(final_stage.out, ec)) {
    fail("{}: output directory exists and is not empty (use --force to replace it)",
         final_stage.out.string());
  }
  // Stages that read only existing models are checked against their headers before any merge
  // runs, so a mistake in a late stage does not surface after the early ones.
  std::vector<std::optional<merge::Plan>> plans(stages.size());
  std::vector<bool> current(stages.size(), false);
  for (size_t i = 0; i < stages.size(); ++i) {
    current[i] = i + 1 < stages.size() && up_to_date(stages[i]);
    if (!current[i] && stages[i].needs.empty()) {
      plans[i] = plan_from_recipe(stages[i].recipe, options.plan);
    }
  }
  StagesReport report;
  for (size_t i = 0; i < stages.size(); ++i) {
    const Stage& s = stages[i];
    const bool intermediate = i + 1 < stages.size();
    const std::string name = s.name.empty() ? "final" : s.name;
    // Upstream changes reach this stage through its hash; an upstream stage merely rebuilt from
    // the same recipe writes the same bytes, so this one stays current.
    if (intermediate && current[i]) {
      core::info("stage '{}': up to date in {}, skipped", name, s.out.string());
      report.skipped.push_back(name);
      continue;
    }
    core::info("stage '{}' ({} of {}): merging into {}", name, i + 1, stages.size(),
               s.out.string());
    if (!plans[i]) plans[i] = plan_from_recipe(s.recipe, options.plan);
    if (intermediate) fs::remove(hash_file(s), ec);
    write(*plans[i], s.out, intermediate);
    plans[i].reset();
    if (intermediate) core::write_text_file(hash_file(s), s.hash + "\n");
    report.merged.push_back(name);
  }
  const fs::path dir = options.intermediate_dir.empty()
                           ? default_intermediate_dir(out)
                           : fs::absolute(options.intermediate_dir).lexically_normal();
  if (options.keep_intermediates) {
    if (stages.size() > 1) core::info("intermediate stages kept in {}", dir.string());
  } else {
    remove_intermediates(stages, dir);
  }
  return report;
}

}  // namespace amalgam::recipe
